#include "quant/blockwise_4bit.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/codebooks.h"
#include "quant/encode.h"

namespace kbitd::quant {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Quantized {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
};

Quantized Quantize(FourBitType type, const std::vector<float>& x, int64_t blocksize) {
  const int64_t n = static_cast<int64_t>(x.size());
  Quantized q{std::vector<uint8_t>(Packed4bitBytes(n), 0xEE),
              std::vector<float>(NumBlocks(n, blocksize), -7.0f)};
  EXPECT_TRUE(Quantize4bit(type, x.data(), ScalarType::kFloat32, n, blocksize, q.packed.data(),
                           q.absmax.data())
                  .ok());
  return q;
}

std::vector<float> Dequantize(FourBitType type, const Quantized& q, int64_t n, int64_t blocksize) {
  std::vector<float> out(n, -7.0f);
  EXPECT_TRUE(Dequantize4bit(type, q.packed.data(), q.absmax.data(), n, blocksize,
                             ScalarType::kFloat32, out.data())
                  .ok());
  return out;
}

uint8_t Nibble(const std::vector<uint8_t>& packed, int64_t k) {
  return k % 2 == 0 ? packed[k / 2] >> 4 : packed[k / 2] & 0xF;
}

std::vector<float> RandomNormal(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

TEST(Blockwise4bitTest, KnownAnswerAndNibbleOrder) {
  // absmax 2: scaled values -1, -0.5, 0, 0.25, 0.5, 1.
  const std::vector<float> x = {-2.0f, -1.0f, 0.0f, 0.5f, 1.0f, 2.0f};
  Quantized nf4 = Quantize(FourBitType::kNf4, x, 64);
  ASSERT_EQ(nf4.absmax, std::vector<float>{2.0f});
  // NF4: -1 -> 0, -0.5 -> 2 (between t1 -0.61 and t2 -0.46), 0 -> 7, 0.25 -> 10, 0.5 -> 12, 1 -> 15
  EXPECT_EQ(nf4.packed, (std::vector<uint8_t>{0x02, 0x7A, 0xCF}));
  Quantized fp4 = Quantize(FourBitType::kFp4, x, 64);
  // FP4: -1 -> 0xB, -0.5 -> 0xD, 0 -> 0x0, 0.25 -> 0x7, 0.5 -> 0x5, 1 -> 0x3
  EXPECT_EQ(fp4.packed, (std::vector<uint8_t>{0xBD, 0x07, 0x53}));
  EXPECT_EQ(Dequantize(FourBitType::kFp4, fp4, 6, 64), x);
}

TEST(Blockwise4bitTest, AllZeroBlockGivesCodeZeroLikeBnbCuda) {
  std::vector<float> x(128, 0.0f);
  for (int i = 64; i < 128; ++i) x[i] = 0.5f;
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    Quantized q = Quantize(type, x, 64);
    EXPECT_EQ(q.absmax[0], 0.0f);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(q.packed[j], 0x00) << j;  // 0 * Inf = NaN -> code 0
    std::vector<float> out = Dequantize(type, q, 128, 64);
    for (int i = 0; i < 64; ++i) {
      EXPECT_EQ(out[i], 0.0f);
      // NF4 code 0 is -1.0, so bnb's output is -0.0; FP4 code 0 is +0.0.
      EXPECT_EQ(std::signbit(out[i]), type == FourBitType::kNf4) << i;
    }
    for (int i = 64; i < 128; ++i) EXPECT_EQ(out[i], 0.5f);
  }
}

TEST(Blockwise4bitTest, OddNPadsLowNibbleWithCodeOfZero) {
  const std::vector<float> x = {1.0f, -1.0f, 0.5f};
  Quantized nf4 = Quantize(FourBitType::kNf4, x, 32);
  ASSERT_EQ(nf4.packed.size(), 2u);
  EXPECT_EQ(nf4.packed[1], (EncodeNf4(0.5f) << 4) | 7);
  Quantized fp4 = Quantize(FourBitType::kFp4, x, 32);
  EXPECT_EQ(fp4.packed[1], (EncodeFp4(0.5f) << 4) | 0);
  EXPECT_EQ(Dequantize(FourBitType::kFp4, fp4, 3, 32), x);
  // A lone zero element in a zero block: padding is 0 * Inf = NaN -> code 0.
  Quantized zero = Quantize(FourBitType::kNf4, {0.0f}, 32);
  EXPECT_EQ(zero.packed, std::vector<uint8_t>{0x00});
}

TEST(Blockwise4bitTest, PartialLastBlockUsesOnlyItsElements) {
  std::vector<float> x = RandomNormal(100, 7);
  x[10] = 50.0f;  // in block 0 only
  Quantized q = Quantize(FourBitType::kNf4, x, 64);
  ASSERT_EQ(q.absmax.size(), 2u);
  EXPECT_EQ(q.absmax[0], 50.0f);
  float expect = 0.0f;
  for (int i = 64; i < 100; ++i) expect = std::fmax(expect, std::fabs(x[i]));
  EXPECT_EQ(q.absmax[1], expect);
}

TEST(Blockwise4bitTest, NaNIsIgnoredByAbsmaxAndEncodesAsCodeZero) {
  std::vector<float> x = {0.5f, kNaN, -0.25f, 1.0f};
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    Quantized q = Quantize(type, x, 32);
    EXPECT_EQ(q.absmax[0], 1.0f);
    EXPECT_EQ(Nibble(q.packed, 1), 0);
    EXPECT_EQ(Nibble(q.packed, 3), type == FourBitType::kNf4 ? 15 : 3);
  }
}

TEST(Blockwise4bitTest, InfMakesAbsmaxInfAndZeroesTheBlock) {
  std::vector<float> x = {0.5f, kInf, -0.25f, 1.0f};
  Quantized q = Quantize(FourBitType::kNf4, x, 32);
  EXPECT_EQ(q.absmax[0], kInf);
  EXPECT_EQ(Nibble(q.packed, 1), 0);  // Inf * 0 = NaN
  EXPECT_EQ(Nibble(q.packed, 0), 7);
  EXPECT_EQ(Nibble(q.packed, 2), 7);  // -0.25 * 0 = -0.0 -> 7
  Quantized f = Quantize(FourBitType::kFp4, x, 32);
  EXPECT_EQ(Nibble(f.packed, 2), 0);  // -0.0 is not < 0
}

// Independent reference: absmax by std::fmax, codes by counting thresholds (codebooks.h).
uint8_t ReferenceCode(FourBitType type, float x) {
  if (type == FourBitType::kNf4) {
    int c = 0;
    for (uint32_t t : kNf4ThresholdBits) c += x > FloatFromBits(t);
    return static_cast<uint8_t>(c);
  }
  int r = 0;
  for (uint32_t t : kFp4ThresholdBits) r += std::fabs(x) > FloatFromBits(t);
  return static_cast<uint8_t>((x < 0 ? 8 : 0) | kFp4PatternByRank[r]);
}

TEST(Blockwise4bitTest, EveryBlocksizeMatchesReferenceAndRoundTripBound) {
  const int64_t n = 3 * 4096 + 333;  // odd, with a partial last block for every size
  const std::vector<float> x = RandomNormal(n, 11);
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    const std::array<float, 16>& lut = type == FourBitType::kNf4 ? Nf4Code() : Fp4Code();
    for (int64_t bs = 32; bs <= 4096; bs *= 2) {
      SCOPED_TRACE(testing::Message() << FourBitTypeName(type) << " blocksize " << bs);
      Quantized q = Quantize(type, x, bs);
      std::vector<float> out = Dequantize(type, q, n, bs);
      for (int64_t b = 0; b < NumBlocks(n, bs); ++b) {
        float amax = 0;
        for (int64_t k = b * bs; k < std::min(n, (b + 1) * bs); ++k) {
          amax = std::fmax(amax, std::fabs(x[k]));
        }
        ASSERT_EQ(q.absmax[b], amax) << b;
      }
      for (int64_t k = 0; k < n; ++k) {
        const float amax = q.absmax[k / bs];
        ASSERT_EQ(Nibble(q.packed, k), ReferenceCode(type, x[k] * (1.0f / amax))) << k;
        ASSERT_EQ(out[k], lut[Nibble(q.packed, k)] * amax) << k;
        // Largest half-gap of either code book is below 0.17 of absmax.
        ASSERT_LE(std::fabs(out[k] - x[k]), 0.17f * amax) << k;
      }
      EXPECT_EQ(Nibble(q.packed, n), ReferenceCode(type, 0.0f));
    }
  }
}

TEST(Blockwise4bitTest, HalfInputsEqualTheirFloatValues) {
  const int64_t n = 1001;
  const std::vector<float> x = RandomNormal(n, 5);
  std::vector<uint16_t> h(n), b(n);
  std::vector<float> hf(n), bf(n);
  for (int64_t i = 0; i < n; ++i) {
    h[i] = FloatToHalf(x[i]);
    hf[i] = HalfToFloat(h[i]);
    b[i] = FloatToBFloat16(x[i]);
    bf[i] = BFloat16ToFloat(b[i]);
  }
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (auto [data, dtype, ref] :
         {std::tuple{(const void*)h.data(), ScalarType::kFloat16, &hf},
          std::tuple{(const void*)b.data(), ScalarType::kBFloat16, &bf}}) {
      std::vector<uint8_t> packed(Packed4bitBytes(n));
      std::vector<float> absmax(NumBlocks(n, 64));
      ASSERT_TRUE(Quantize4bit(type, data, dtype, n, 64, packed.data(), absmax.data()).ok());
      Quantized expect = Quantize(type, *ref, 64);
      EXPECT_EQ(packed, expect.packed);
      EXPECT_EQ(absmax, expect.absmax);
    }
  }
}

TEST(Blockwise4bitTest, DequantizeRoundsOnceToHalfTypes) {
  const int64_t n = 512;
  const std::vector<float> x = RandomNormal(n, 9);
  Quantized q = Quantize(FourBitType::kNf4, x, 128);
  std::vector<float> f = Dequantize(FourBitType::kNf4, q, n, 128);
  std::vector<uint16_t> h(n), b(n);
  ASSERT_TRUE(Dequantize4bit(FourBitType::kNf4, q.packed.data(), q.absmax.data(), n, 128,
                             ScalarType::kFloat16, h.data())
                  .ok());
  ASSERT_TRUE(Dequantize4bit(FourBitType::kNf4, q.packed.data(), q.absmax.data(), n, 128,
                             ScalarType::kBFloat16, b.data())
                  .ok());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(h[i], FloatToHalf(f[i]));
    EXPECT_EQ(b[i], FloatToBFloat16(f[i]));
  }
}

TEST(Blockwise4bitTest, InvalidArgumentsAreRejected) {
  std::vector<float> x(64, 1.0f);
  std::vector<uint8_t> packed(32);
  std::vector<float> absmax(4);
  for (int64_t bs : {0, 16, 48, 100, 8192, -64}) {
    absl::Status s = Quantize4bit(FourBitType::kNf4, x.data(), ScalarType::kFloat32, 64, bs,
                                  packed.data(), absmax.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bs;
    EXPECT_NE(s.message().find("blocksize"), std::string::npos) << s;
  }
  absl::Status s = Quantize4bit(FourBitType::kNf4, x.data(), ScalarType::kFloat32, -1, 64,
                                packed.data(), absmax.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = Quantize4bit(FourBitType::kNf4, x.data(), ScalarType::kInt8, 64, 64, packed.data(),
                   absmax.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("int8"), std::string::npos) << s;
  s = Dequantize4bit(FourBitType::kFp4, packed.data(), absmax.data(), 64, 64, ScalarType::kUInt8,
                     x.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = Quantize4bit(FourBitType::kNf4, nullptr, ScalarType::kFloat32, 64, 64, packed.data(),
                   absmax.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Quantize4bit(FourBitType::kNf4, nullptr, ScalarType::kFloat32, 0, 64, nullptr, nullptr).ok());
  EXPECT_EQ(FourBitTypeFromName("int4").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*FourBitTypeFromName("fp4"), FourBitType::kFp4);
  EXPECT_EQ(FourBitTypeName(FourBitType::kNf4), "nf4");
}

}  // namespace
}  // namespace kbitd::quant
