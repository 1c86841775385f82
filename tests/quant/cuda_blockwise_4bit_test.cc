// CUDA 4-bit blockwise quantize / dequantize must give the CPU reference's bytes exactly: packed
// codes, absmax and dequantized values, for NF4 and FP4, every blocksize and dtype, odd n, partial
// last blocks, special values and unaligned pointers. Skips without a GPU.
#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/device.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

using testing::CompareBytes;
using testing::DtypeName;
using testing::FromDevice;
using testing::PoisonedOutput;
using testing::ToDevice;

struct Case {
  FourBitType type;
  ScalarType dtype;
  int64_t blocksize;
  int64_t n;
  bool misaligned;  // data pointers off their 16-byte alignment (scalar path)
  bool specials;
};

std::string Describe(const Case& c) {
  return absl::StrCat(std::string(FourBitTypeName(c.type)), " ", DtypeName(c.dtype),
                      " bs=", c.blocksize, " n=", c.n, c.misaligned ? " misaligned" : "",
                      c.specials ? " specials" : "");
}

void CheckCase(const Case& c, std::mt19937& rng) {
  SCOPED_TRACE(Describe(c));
  const std::vector<float> x = testing::RandomFloats(c.n, rng, c.specials);
  const std::vector<uint8_t> input = testing::Encode(x, c.dtype);
  const int64_t bytes = Packed4bitBytes(c.n);
  const int64_t nblocks = NumBlocks(c.n, c.blocksize);

  std::vector<uint8_t> packed(bytes);
  std::vector<float> absmax(nblocks);
  ASSERT_TRUE(quant::Quantize4bit(c.type, input.data(), c.dtype, c.n, c.blocksize, packed.data(),
                                  absmax.data())
                  .ok());

  const size_t in_shift = c.misaligned ? ScalarTypeSize(c.dtype) : 0;
  const size_t code_shift = c.misaligned ? 1 : 0;
  auto d_input = ToDevice(input, in_shift);
  auto d_packed = PoisonedOutput(bytes, code_shift);
  auto d_absmax = PoisonedOutput(nblocks * sizeof(float));
  ASSERT_TRUE(Quantize4bit(c.type, d_input.data, c.dtype, c.n, c.blocksize,
                           static_cast<uint8_t*>(d_packed.data), static_cast<float*>(d_absmax.data),
                           nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(packed, FromDevice<uint8_t>(d_packed, bytes)), "") << "packed";
  EXPECT_EQ(CompareBytes(absmax, FromDevice<float>(d_absmax, nblocks)), "") << "absmax";

  for (ScalarType out_type : testing::kFloatTypes) {
    SCOPED_TRACE(absl::StrCat("dequantize to ", DtypeName(out_type)));
    const size_t out_bytes = c.n * ScalarTypeSize(out_type);
    std::vector<uint8_t> expected(out_bytes);
    ASSERT_TRUE(quant::Dequantize4bit(c.type, packed.data(), absmax.data(), c.n, c.blocksize,
                                      out_type, expected.data())
                    .ok());
    auto d_out = PoisonedOutput(out_bytes, c.misaligned ? ScalarTypeSize(out_type) : 0);
    ASSERT_TRUE(Dequantize4bit(c.type, static_cast<const uint8_t*>(d_packed.data),
                               static_cast<const float*>(d_absmax.data), c.n, c.blocksize, out_type,
                               d_out.data, nullptr)
                    .ok());
    ASSERT_TRUE(SynchronizeStream(nullptr).ok());
    EXPECT_EQ(CompareBytes(expected, FromDevice<uint8_t>(d_out, out_bytes)), "");
  }
}

TEST(CudaBlockwise4bitTest, MatchesCpuForEveryBlocksizeDtypeAndShape) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (ScalarType dtype : testing::kFloatTypes) {
      for (int64_t bs = 32; bs <= 4096; bs *= 2) {
        for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{17}, bs - 1, bs, bs + 1, 3 * bs + 15,
                          int64_t{4096 * 5 + 2049}, int64_t{300 * 257}}) {
          CheckCase({type, dtype, bs, n, false, false}, rng);
        }
      }
    }
  }
}

TEST(CudaBlockwise4bitTest, MatchesCpuWithSpecialValuesAndUnalignedPointers) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (ScalarType dtype : testing::kFloatTypes) {
      for (int64_t bs : {32, 64, 256, 1024, 4096}) {
        for (bool misaligned : {false, true}) {
          CheckCase({type, dtype, bs, 4096 * 3 + 777, misaligned, true}, rng);
          CheckCase({type, dtype, bs, 63, misaligned, true}, rng);
        }
      }
    }
  }
}

TEST(CudaBlockwise4bitTest, MatchesCpuOnLargeTensors) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  // 1024 x 1027 + 1: many tiles per CTA in the grid-stride loop, odd n.
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    CheckCase({type, ScalarType::kBFloat16, 64, 1024 * 1027 + 1, false, true}, rng);
    CheckCase({type, ScalarType::kFloat16, 4096, 1024 * 1027 + 1, false, false}, rng);
  }
}

// The dequantize kernel converts finite products to 16 bits with the hardware's pair conversion;
// it must round like the host at the edges too: subnormal results, the smallest normals, and
// products that round up to infinity in fp16/bf16. Random codes, absmax spread over every binade.
TEST(CudaBlockwise4bitTest, DequantizeMatchesCpuForExtremeScales) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  const int64_t blocksize = 64, nblocks = 4096, n = blocksize * nblocks;
  std::vector<uint8_t> packed(Packed4bitBytes(n));
  for (uint8_t& b : packed) b = static_cast<uint8_t>(rng());
  std::vector<float> absmax(nblocks);
  std::uniform_int_distribution<uint32_t> bits(1, 0x7F7FFFFFu);  // every positive finite float
  for (int64_t i = 0; i < nblocks; ++i) {
    absmax[i] = i % 4 == 0 ? std::ldexp(1.0f, static_cast<int>(i % 300) - 149)  // 2^-149 .. 2^150
                           : std::bit_cast<float>(bits(rng));
  }
  auto d_packed = ToDevice(packed, 0);
  auto d_absmax = ToDevice(absmax, 0);
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (ScalarType out_type : testing::kFloatTypes) {
      SCOPED_TRACE(absl::StrCat(std::string(FourBitTypeName(type)), " to ", DtypeName(out_type)));
      const size_t out_bytes = n * ScalarTypeSize(out_type);
      std::vector<uint8_t> expected(out_bytes);
      ASSERT_TRUE(quant::Dequantize4bit(type, packed.data(), absmax.data(), n, blocksize, out_type,
                                        expected.data())
                      .ok());
      auto d_out = PoisonedOutput(out_bytes);
      ASSERT_TRUE(Dequantize4bit(type, static_cast<const uint8_t*>(d_packed.data),
                                 static_cast<const float*>(d_absmax.data), n, blocksize, out_type,
                                 d_out.data, nullptr)
                      .ok());
      ASSERT_TRUE(SynchronizeStream(nullptr).ok());
      EXPECT_EQ(CompareBytes(expected, FromDevice<uint8_t>(d_out, out_bytes)), "");
    }
  }
}

TEST(CudaBlockwise4bitTest, RejectsBadArguments) {
  uint8_t* packed = reinterpret_cast<uint8_t*>(0x1000);
  float* absmax = reinterpret_cast<float*>(0x2000);
  const void* input = reinterpret_cast<const void*>(0x3000);
  EXPECT_EQ(
      Quantize4bit(FourBitType::kNf4, input, ScalarType::kBFloat16, 64, 48, packed, absmax, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Quantize4bit(FourBitType::kNf4, input, ScalarType::kInt8, 64, 64, packed, absmax, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Quantize4bit(FourBitType::kNf4, input, ScalarType::kBFloat16, -1, 64, packed, absmax, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Dequantize4bit(FourBitType::kFp4, nullptr, absmax, 64, 64, ScalarType::kFloat16, packed,
                           nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing to do is not an error, and launches nothing.
  EXPECT_TRUE(Quantize4bit(FourBitType::kNf4, nullptr, ScalarType::kBFloat16, 0, 64, nullptr,
                           nullptr, nullptr)
                  .ok());
}

}  // namespace
}  // namespace kbitd::quant::cuda
