#include "quant/int8_rowwise.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/encode.h"

namespace kbitd::quant {
namespace {

TEST(Int8RowwiseTest, WeightsRoundViaFp16AndHalfToEven) {
  // Row 0: absmax 127 -> scale 1: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2. Row 1: all zero -> codes 0.
  const std::vector<float> w = {127.0f, 2.5f, 3.5f, -2.5f, 0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<int8_t> cb(8, 99);
  std::vector<float> scb(2);
  ASSERT_TRUE(
      QuantizeRowwiseInt8(w.data(), ScalarType::kFloat32, 2, 4, cb.data(), scb.data()).ok());
  EXPECT_EQ(cb, (std::vector<int8_t>{127, 2, 4, -2, 0, 0, 0, 0}));
  EXPECT_EQ(scb, (std::vector<float>{127.0f, 0.0f}));
  // bf16/fp32 weights are rounded to fp16 first: 1.0001 -> 1.0 in fp16.
  const std::vector<float> w2 = {1.0001f, -0.5f};
  ASSERT_TRUE(
      QuantizeRowwiseInt8(w2.data(), ScalarType::kFloat32, 1, 2, cb.data(), scb.data()).ok());
  EXPECT_EQ(scb[0], 1.0f);
  std::vector<float> out(2);
  ASSERT_TRUE(
      DequantizeRowwiseInt8(cb.data(), scb.data(), 1, 2, ScalarType::kFloat32, out.data()).ok());
  EXPECT_EQ(out[0], (127.0f * 1.0f) * kInt8DequantScale);
  EXPECT_EQ(out[1], (-64.0f * 1.0f) * kInt8DequantScale);  // -63.5 -> -64 (half to even)
}

TEST(Int8RowwiseTest, ActivationOutliersAreSplitByColumn) {
  // 2 x 4, threshold 6: column 1 holds an outlier (exactly 6.0 counts), column 3 one of -7.
  const std::vector<float> x = {1.0f, 6.0f, -2.0f, 0.5f, 0.25f, 1.0f, 4.0f, -7.0f};
  auto act = QuantizeActivationsInt8(x.data(), ScalarType::kFloat32, 2, 4, 6.0f);
  ASSERT_TRUE(act.ok()) << act.status();
  EXPECT_EQ(act->outlier_cols, (std::vector<int64_t>{1, 3}));
  // Row absmax skips outliers but not the non-outlier entries of outlier columns.
  EXPECT_EQ(act->sca, (std::vector<float>{2.0f, 4.0f}));
  EXPECT_EQ(act->ca, (std::vector<int8_t>{64, 0, -127, 0, 8, 0, 127, 0}));
  auto plain = QuantizeActivationsInt8(x.data(), ScalarType::kFloat32, 2, 4, 0.0f);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->outlier_cols.empty());
  EXPECT_EQ(plain->sca, (std::vector<float>{6.0f, 7.0f}));
  // A single row keeps non-outlier values (none here besides the outliers themselves).
  auto one = QuantizeActivationsInt8(x.data(), ScalarType::kFloat32, 1, 4, 6.0f);
  EXPECT_EQ(one->outlier_cols, (std::vector<int64_t>{1}));
  EXPECT_EQ(QuantizeActivationsInt8(x.data(), ScalarType::kFloat32, 2, 4, -1.0f).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Int8RowwiseTest, LinearEqualsBnbFormulaWithoutOutliers) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t m = 3, k = 32, n = 5;
  std::vector<uint16_t> x(m * k), w(n * k), bias(n);
  for (auto& v : x) v = FloatToHalf(dist(rng));
  for (auto& v : w) v = FloatToHalf(0.1f * dist(rng));
  for (auto& v : bias) v = FloatToHalf(dist(rng));
  std::vector<int8_t> cb(n * k);
  std::vector<float> scb(n);
  ASSERT_TRUE(
      QuantizeRowwiseInt8(w.data(), ScalarType::kFloat16, n, k, cb.data(), scb.data()).ok());
  std::vector<uint16_t> y(m * n);
  ASSERT_TRUE(Int8Linear(x.data(), ScalarType::kFloat16, m, k, cb.data(), scb.data(), n,
                         bias.data(), 0.0f, y.data())
                  .ok());
  auto act = QuantizeActivationsInt8(x.data(), ScalarType::kFloat16, m, k, 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t o = 0; o < n; ++o) {
      int32_t c = 0;
      for (int64_t j = 0; j < k; ++j) c += act->ca[r * k + j] * cb[o * k + j];
      const float want = std::fma((static_cast<float>(c) * act->sca[r]) * scb[o],
                                  kInt8MatmulDequantScale, HalfToFloat(bias[o]));
      EXPECT_EQ(y[r * n + o], FloatToHalf(want));
      // And close to the unquantized product.
      float ref = HalfToFloat(bias[o]);
      for (int64_t j = 0; j < k; ++j) ref += HalfToFloat(x[r * k + j]) * HalfToFloat(w[o * k + j]);
      EXPECT_NEAR(HalfToFloat(y[r * n + o]), ref, 0.05f);
    }
  }
}

TEST(Int8RowwiseTest, OutlierColumnsUseDequantizedInt8Weights) {
  // One row, one outlier column (x = 10): y = C-part + x_outlier * dequant(cb[:, 1]).
  const std::vector<float> x = {1.0f, 10.0f};
  const std::vector<float> w = {0.5f, 0.25f};  // one output row
  std::vector<int8_t> cb(2);
  std::vector<float> scb(1);
  ASSERT_TRUE(
      QuantizeRowwiseInt8(w.data(), ScalarType::kFloat32, 1, 2, cb.data(), scb.data()).ok());
  float y = 0;
  ASSERT_TRUE(
      Int8Linear(x.data(), ScalarType::kFloat32, 1, 2, cb.data(), scb.data(), 1, nullptr, 6.0f, &y)
          .ok());
  const float w1 = (static_cast<float>(cb[1]) * scb[0]) * kInt8DequantScale;
  // CA = [127, 0] (the outlier is zeroed, SCA = 1), so C = 127 * cb[0]; the int8 part is rounded
  // to fp16 by int8_mm_dequant before the fp32 addmm of the outlier column.
  const float c = static_cast<float>(127 * cb[0]);
  const float main_part =
      HalfToFloat(FloatToHalf(std::fma((c * 1.0f) * scb[0], kInt8MatmulDequantScale, 0.0f)));
  EXPECT_EQ(y, main_part + 10.0f * w1);
  EXPECT_NEAR(y, 0.5f + 2.5f, 0.03f);  // cb[1] = rint(63.5) = 64: w1 = 0.252
}

TEST(Int8RowwiseTest, InvalidArgumentsAreRejected) {
  std::vector<float> w(4);
  std::vector<int8_t> cb(4);
  std::vector<float> scb(2);
  EXPECT_EQ(QuantizeRowwiseInt8(w.data(), ScalarType::kInt8, 2, 2, cb.data(), scb.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      QuantizeRowwiseInt8(w.data(), ScalarType::kFloat32, -1, 2, cb.data(), scb.data()).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Linear(w.data(), ScalarType::kFloat32, 2, 2, nullptr, scb.data(), 2, nullptr, 0.0f,
                       w.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::quant
