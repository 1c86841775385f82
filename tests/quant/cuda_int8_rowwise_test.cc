// CUDA LLM.int8() row-wise weight quantize / dequantize must give the CPU reference's bytes
// exactly (CB, SCB and dequantized values) for every dtype, row lengths that do and do not fill
// 16-byte vectors, zero rows, NaN/Inf and fp16 overflow. Skips without a GPU.
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/cuda/device.h"
#include "quant/cuda/int8_rowwise.h"
#include "quant/int8_rowwise.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

using testing::CompareBytes;
using testing::DtypeName;
using testing::FromDevice;
using testing::PoisonedOutput;
using testing::ToDevice;

void CheckCase(ScalarType dtype, int64_t rows, int64_t cols, bool specials, std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat(DtypeName(dtype), " ", rows, "x", cols, specials ? " specials" : ""));
  const int64_t n = rows * cols;
  std::vector<float> w = testing::RandomFloats(n, rng, specials);
  if (specials && rows > 2) {
    for (int64_t c = 0; c < cols; ++c) w[1 * cols + c] = 0.0f;          // a zero row
    if (cols > 0 && dtype == ScalarType::kFloat32) w[2 * cols] = 1e5f;  // Inf once in fp16
  }
  const std::vector<uint8_t> input = testing::Encode(w, dtype);
  std::vector<int8_t> cb(n);
  std::vector<float> scb(rows);
  ASSERT_TRUE(
      quant::QuantizeRowwiseInt8(input.data(), dtype, rows, cols, cb.data(), scb.data()).ok());

  auto d_input = ToDevice(input);
  auto d_cb = PoisonedOutput(n);
  auto d_scb = PoisonedOutput(rows * sizeof(float));
  ASSERT_TRUE(QuantizeRowwiseInt8(d_input.data, dtype, rows, cols, static_cast<int8_t*>(d_cb.data),
                                  static_cast<float*>(d_scb.data), nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(cb, FromDevice<int8_t>(d_cb, n)), "") << "CB";
  EXPECT_EQ(CompareBytes(scb, FromDevice<float>(d_scb, rows)), "") << "SCB";

  for (ScalarType out_type : testing::kFloatTypes) {
    SCOPED_TRACE(absl::StrCat("dequantize to ", DtypeName(out_type)));
    const size_t out_bytes = n * ScalarTypeSize(out_type);
    std::vector<uint8_t> expected(out_bytes);
    ASSERT_TRUE(
        quant::DequantizeRowwiseInt8(cb.data(), scb.data(), rows, cols, out_type, expected.data())
            .ok());
    auto d_out = PoisonedOutput(out_bytes);
    ASSERT_TRUE(DequantizeRowwiseInt8(static_cast<const int8_t*>(d_cb.data),
                                      static_cast<const float*>(d_scb.data), rows, cols, out_type,
                                      d_out.data, nullptr)
                    .ok());
    ASSERT_TRUE(SynchronizeStream(nullptr).ok());
    EXPECT_EQ(CompareBytes(expected, FromDevice<uint8_t>(d_out, out_bytes)), "");
  }
}

TEST(CudaInt8RowwiseTest, MatchesCpu) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  for (ScalarType dtype : testing::kFloatTypes) {
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 1}, {3, 17}, {7, 4096}, {64, 4096 + 16}, {129, 1000}, {33, 5000}, {5, 0}}) {
      CheckCase(dtype, rows, cols, false, rng);
      CheckCase(dtype, rows, cols, true, rng);
    }
  }
}

TEST(CudaInt8RowwiseTest, RejectsBadArguments) {
  EXPECT_EQ(
      QuantizeRowwiseInt8(nullptr, ScalarType::kFloat16, 4, 4, nullptr, nullptr, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      QuantizeRowwiseInt8(nullptr, ScalarType::kFloat16, -1, 4, nullptr, nullptr, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      QuantizeRowwiseInt8(nullptr, ScalarType::kFloat16, 0, 4, nullptr, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace kbitd::quant::cuda
