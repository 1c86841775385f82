// CUDA LLM.int8() activation quantization (outlier columns, SCA, codes), int8 matmul + dequant and
// the full Int8Linear forward must give the CPU reference's bytes exactly: fp32/fp16/bf16,
// threshold 0 and 6 with outlier columns present, m = 1 and m > 1, shapes that are not multiples of
// 4/16/32/64, with and without bias, and inputs with NaN/Inf/zeros. Skips without a GPU.
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/cuda/device.h"
#include "quant/cuda/int8_matmul.h"
#include "quant/cuda/int8_rowwise.h"
#include "quant/int8_rowwise.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

struct Shape {
  int64_t m, k, n;
};

// m = 1 and m > 1; k and n off every multiple of 4/16/32/64, next to them, and k = 0.
const Shape kShapes[] = {{1, 1, 1},     {1, 37, 19},   {1, 4096, 65},   {2, 64, 64}, {5, 100, 70},
                         {17, 259, 33}, {70, 4099, 9}, {130, 260, 129}, {3, 0, 5}};

// Random activations with a few outlier columns (|x| in [6, 60), some exactly 6) in random rows,
// so that threshold 6 finds columns with outliers in some rows only.
std::vector<float> Activations(int64_t m, int64_t k, bool specials, std::mt19937& rng) {
  std::vector<float> x = testing::RandomFloats(m * k, rng, specials);
  if (k == 0) return x;
  std::uniform_int_distribution<int64_t> col(0, k - 1);
  std::uniform_int_distribution<int64_t> row(0, m - 1);
  std::uniform_real_distribution<float> big(6.0f, 60.0f);
  for (int i = 0; i < 1 + static_cast<int>(k / 50); ++i) {
    const float v = i % 5 == 0 ? 6.0f : big(rng);
    x[row(rng) * k + col(rng)] = i % 2 ? -v : v;
  }
  return x;
}

struct Weights {
  std::vector<int8_t> cb;
  std::vector<float> scb;
};

Weights QuantizedWeights(int64_t n, int64_t k, std::mt19937& rng) {
  Weights w{std::vector<int8_t>(n * k), std::vector<float>(n)};
  const std::vector<uint8_t> raw =
      testing::Encode(testing::RandomFloats(n * k, rng, false), ScalarType::kFloat16);
  EXPECT_TRUE(
      quant::QuantizeRowwiseInt8(raw.data(), ScalarType::kFloat16, n, k, w.cb.data(), w.scb.data())
          .ok());
  return w;
}

void CheckActivations(ScalarType dtype, const Shape& s, float threshold, bool specials,
                      std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat("activations ", testing::DtypeName(dtype), " ", s.m, "x", s.k,
                            " threshold ", threshold, specials ? " specials" : ""));
  const std::vector<uint8_t> x = testing::Encode(Activations(s.m, s.k, specials, rng), dtype);
  auto expected = quant::QuantizeActivationsInt8(x.data(), dtype, s.m, s.k, threshold);
  ASSERT_TRUE(expected.ok()) << expected.status();
  if (threshold > 0.0f && s.k > 0) {
    EXPECT_FALSE(expected->outlier_cols.empty());
  }

  auto d_x = testing::ToDevice(x);
  auto d_ca = testing::PoisonedOutput(s.m * s.k);
  auto d_sca = testing::PoisonedOutput(s.m * sizeof(float));
  auto d_cols = testing::PoisonedOutput(s.k * sizeof(int64_t));
  auto d_count = testing::PoisonedOutput(sizeof(int64_t));
  ASSERT_TRUE(
      QuantizeActivationsInt8(d_x.data, dtype, s.m, s.k, threshold, static_cast<int8_t*>(d_ca.data),
                              static_cast<float*>(d_sca.data), static_cast<int64_t*>(d_cols.data),
                              static_cast<int64_t*>(d_count.data), nullptr)
          .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(testing::CompareBytes(expected->ca, testing::FromDevice<int8_t>(d_ca, s.m * s.k)), "")
      << "CA";
  EXPECT_EQ(testing::CompareBytes(expected->sca, testing::FromDevice<float>(d_sca, s.m)), "")
      << "SCA";
  const int64_t count = testing::FromDevice<int64_t>(d_count, 1)[0];
  ASSERT_EQ(count, static_cast<int64_t>(expected->outlier_cols.size()));
  std::vector<int64_t> cols = testing::FromDevice<int64_t>(d_cols, s.k);
  cols.resize(count);
  EXPECT_EQ(cols, expected->outlier_cols);
}

void CheckMatmulDequant(ScalarType out_type, const Shape& s, bool with_bias, std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat("matmul dequant to ", testing::DtypeName(out_type), " ", s.m, "x", s.k,
                            "x", s.n, with_bias ? " bias" : ""));
  const std::vector<uint8_t> x =
      testing::Encode(Activations(s.m, s.k, false, rng), ScalarType::kFloat32);
  auto act = quant::QuantizeActivationsInt8(x.data(), ScalarType::kFloat32, s.m, s.k, 0.0f);
  ASSERT_TRUE(act.ok()) << act.status();
  const Weights w = QuantizedWeights(s.n, s.k, rng);
  const std::vector<uint8_t> bias =
      testing::Encode(testing::RandomFloats(s.n, rng, false), out_type);
  const void* host_bias = with_bias ? bias.data() : nullptr;
  const size_t out_bytes = s.m * s.n * ScalarTypeSize(out_type);
  std::vector<uint8_t> expected(out_bytes);
  ASSERT_TRUE(quant::Int8MatmulDequant(act->ca.data(), act->sca.data(), s.m, s.k, w.cb.data(),
                                       w.scb.data(), s.n, host_bias, out_type, expected.data())
                  .ok());

  // Misaligned codes take the byte-gather path of the GEMM's tile loads.
  for (size_t misalign : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("misalign ", misalign));
    auto d_ca = testing::ToDevice(act->ca, misalign);
    auto d_sca = testing::ToDevice(act->sca);
    auto d_cb = testing::ToDevice(w.cb, misalign);
    auto d_scb = testing::ToDevice(w.scb);
    auto d_bias = testing::ToDevice(bias);
    auto d_y = testing::PoisonedOutput(out_bytes);
    ASSERT_TRUE(Int8MatmulDequant(static_cast<const int8_t*>(d_ca.data),
                                  static_cast<const float*>(d_sca.data), s.m, s.k,
                                  static_cast<const int8_t*>(d_cb.data),
                                  static_cast<const float*>(d_scb.data), s.n,
                                  with_bias ? d_bias.data : nullptr, out_type, d_y.data, nullptr)
                    .ok());
    EXPECT_EQ(testing::SyncAndCompare(expected, d_y), "");
  }
}

void CheckLinear(ScalarType dtype, const Shape& s, float threshold, bool with_bias, bool specials,
                 std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat("linear ", testing::DtypeName(dtype), " ", s.m, "x", s.k, "x", s.n,
                            " threshold ", threshold, with_bias ? " bias" : "",
                            specials ? " specials" : ""));
  const std::vector<uint8_t> x = testing::Encode(Activations(s.m, s.k, specials, rng), dtype);
  const Weights w = QuantizedWeights(s.n, s.k, rng);
  const std::vector<uint8_t> bias = testing::Encode(testing::RandomFloats(s.n, rng, false), dtype);
  const size_t out_bytes = s.m * s.n * ScalarTypeSize(dtype);
  std::vector<uint8_t> expected(out_bytes);
  ASSERT_TRUE(quant::Int8Linear(x.data(), dtype, s.m, s.k, w.cb.data(), w.scb.data(), s.n,
                                with_bias ? bias.data() : nullptr, threshold, expected.data())
                  .ok());

  auto d_x = testing::ToDevice(x);
  auto d_cb = testing::ToDevice(w.cb);
  auto d_scb = testing::ToDevice(w.scb);
  auto d_bias = testing::ToDevice(bias);
  auto d_ws = testing::PoisonedOutput(Int8LinearWorkspaceBytes(s.m, s.k));
  auto d_y = testing::PoisonedOutput(out_bytes);
  ASSERT_TRUE(Int8Linear(d_x.data, dtype, s.m, s.k, static_cast<const int8_t*>(d_cb.data),
                         static_cast<const float*>(d_scb.data), s.n,
                         with_bias ? d_bias.data : nullptr, threshold, d_ws.data, d_y.data, nullptr)
                  .ok());
  EXPECT_EQ(testing::SyncAndCompare(expected, d_y), "");
}

TEST(CudaInt8ActivationsTest, QuantizeActivationsMatchesCpu) {
  KBITD_GPU_TEST_RNG(rng);
  for (ScalarType dtype : testing::kFloatTypes) {
    for (const Shape& s : kShapes) {
      for (float threshold : {0.0f, 6.0f}) {
        CheckActivations(dtype, s, threshold, false, rng);
        CheckActivations(dtype, s, threshold, true, rng);
      }
    }
    CheckActivations(dtype, {4096, 3000, 0}, 6.0f, false, rng);  // many rows and compaction chunks
  }
}

TEST(CudaInt8ActivationsTest, MatmulDequantMatchesCpu) {
  KBITD_GPU_TEST_RNG(rng);
  for (ScalarType out_type : testing::kFloatTypes) {
    for (const Shape& s : kShapes) {
      CheckMatmulDequant(out_type, s, false, rng);
      CheckMatmulDequant(out_type, s, true, rng);
    }
  }
}

TEST(CudaInt8ActivationsTest, LinearMatchesCpu) {
  KBITD_GPU_TEST_RNG(rng);
  for (ScalarType dtype : testing::kFloatTypes) {
    for (const Shape& s : kShapes) {
      for (float threshold : {0.0f, 6.0f}) {
        for (bool with_bias : {false, true})
          CheckLinear(dtype, s, threshold, with_bias, false, rng);
        CheckLinear(dtype, s, threshold, true, true, rng);
      }
    }
  }
}

TEST(CudaInt8ActivationsTest, RejectsBadArguments) {
  EXPECT_EQ(QuantizeActivationsInt8(nullptr, ScalarType::kFloat16, 2, 4, 6.0f, nullptr, nullptr,
                                    nullptr, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeActivationsInt8(nullptr, ScalarType::kFloat16, 0, 0, -1.0f, nullptr, nullptr,
                                    nullptr, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8MatmulDequant(nullptr, nullptr, 2, 3, nullptr, nullptr, -1, nullptr,
                              ScalarType::kFloat16, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8MatmulDequant(nullptr, nullptr, 2, 3, nullptr, nullptr, 4, nullptr,
                              ScalarType::kInt32, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Int8MatmulDequant(nullptr, nullptr, 0, 0, nullptr, nullptr, 0, nullptr,
                                ScalarType::kFloat32, nullptr, nullptr)
                  .ok());
  EXPECT_EQ(Int8Linear(nullptr, ScalarType::kFloat16, 2, 3, nullptr, nullptr, 4, nullptr, 6.0f,
                       nullptr, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::quant::cuda
