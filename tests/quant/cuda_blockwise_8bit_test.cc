// CUDA 8-bit blockwise quantize / dequantize (dynamic map, and any ascending 256-entry code) must
// give the CPU reference's bytes exactly. Skips without a GPU.
#include <algorithm>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_8bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_8bit.h"
#include "quant/cuda/device.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

using testing::CompareBytes;
using testing::DtypeName;
using testing::FromDevice;
using testing::PoisonedOutput;
using testing::ToDevice;

std::vector<float> DynamicCode() { return {DynamicMap().begin(), DynamicMap().end()}; }

// An ascending code that is not the dynamic map, to prove the kernels read the one passed in.
std::vector<float> RandomAscendingCode(std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> code(256);
  for (auto& v : code) v = u(rng);
  std::sort(code.begin(), code.end());
  return code;
}

void CheckCase(const std::vector<float>& code, ScalarType dtype, int64_t bs, int64_t n,
               bool misaligned, bool specials, std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat(DtypeName(dtype), " bs=", bs, " n=", n, misaligned ? " misaligned" : "",
                            specials ? " specials" : ""));
  const std::vector<uint8_t> input =
      testing::Encode(testing::RandomFloats(n, rng, specials), dtype);
  const int64_t nblocks = NumBlocks(n, bs);
  std::vector<uint8_t> codes(n);
  std::vector<float> absmax(nblocks);
  ASSERT_TRUE(quant::QuantizeBlockwise8bit(code.data(), input.data(), dtype, n, bs, codes.data(),
                                           absmax.data())
                  .ok());

  auto d_code = ToDevice(code);
  auto d_input = ToDevice(input, misaligned ? ScalarTypeSize(dtype) : 0);
  auto d_codes = PoisonedOutput(n, misaligned ? 3 : 0);
  auto d_absmax = PoisonedOutput(nblocks * sizeof(float));
  ASSERT_TRUE(QuantizeBlockwise8bit(static_cast<const float*>(d_code.data), d_input.data, dtype, n,
                                    bs, static_cast<uint8_t*>(d_codes.data),
                                    static_cast<float*>(d_absmax.data), nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(codes, FromDevice<uint8_t>(d_codes, n)), "") << "codes";
  EXPECT_EQ(CompareBytes(absmax, FromDevice<float>(d_absmax, nblocks)), "") << "absmax";

  for (ScalarType out_type : testing::kFloatTypes) {
    SCOPED_TRACE(absl::StrCat("dequantize to ", DtypeName(out_type)));
    const size_t out_bytes = n * ScalarTypeSize(out_type);
    std::vector<uint8_t> expected(out_bytes);
    ASSERT_TRUE(quant::DequantizeBlockwise8bit(code.data(), codes.data(), absmax.data(), n, bs,
                                               out_type, expected.data())
                    .ok());
    auto d_out = PoisonedOutput(out_bytes, misaligned ? ScalarTypeSize(out_type) : 0);
    ASSERT_TRUE(DequantizeBlockwise8bit(static_cast<const float*>(d_code.data),
                                        static_cast<const uint8_t*>(d_codes.data),
                                        static_cast<const float*>(d_absmax.data), n, bs, out_type,
                                        d_out.data, nullptr)
                    .ok());
    ASSERT_TRUE(SynchronizeStream(nullptr).ok());
    EXPECT_EQ(CompareBytes(expected, FromDevice<uint8_t>(d_out, out_bytes)), "");
  }
}

TEST(CudaBlockwise8bitTest, MatchesCpuForEveryBlocksizeDtypeAndShape) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  const std::vector<float> code = DynamicCode();
  for (ScalarType dtype : testing::kFloatTypes) {
    for (int64_t bs = 64; bs <= 4096; bs *= 2) {
      for (int64_t n :
           {int64_t{1}, int64_t{5}, bs - 1, bs, bs + 1, 2 * bs + 17, int64_t{4096 * 4 + 1000}}) {
        CheckCase(code, dtype, bs, n, false, false, rng);
      }
    }
  }
}

TEST(CudaBlockwise8bitTest, MatchesCpuWithSpecialsUnalignedPointersAndOtherCodes) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  const std::vector<float> dynamic = DynamicCode();
  const std::vector<float> other = RandomAscendingCode(rng);
  for (ScalarType dtype : testing::kFloatTypes) {
    for (int64_t bs : {64, 256, 4096}) {
      for (bool misaligned : {false, true}) {
        CheckCase(dynamic, dtype, bs, 4096 * 3 + 333, misaligned, true, rng);
        CheckCase(other, dtype, bs, 4096 + 5, misaligned, true, rng);
      }
    }
  }
  CheckCase(dynamic, ScalarType::kBFloat16, 4096, 1024 * 1031, false, true, rng);
}

TEST(CudaBlockwise8bitTest, RejectsBadArguments) {
  const float* code = reinterpret_cast<const float*>(0x1000);
  const void* input = reinterpret_cast<const void*>(0x2000);
  uint8_t* codes = reinterpret_cast<uint8_t*>(0x3000);
  float* absmax = reinterpret_cast<float*>(0x4000);
  EXPECT_EQ(QuantizeBlockwise8bit(code, input, ScalarType::kFloat32, 64, 32, codes, absmax, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      QuantizeBlockwise8bit(nullptr, input, ScalarType::kFloat32, 64, 64, codes, absmax, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      DequantizeBlockwise8bit(code, codes, absmax, 64, 64, ScalarType::kFloat64, codes, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::quant::cuda
