#include "quant/encode.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/codebooks.h"

namespace kbitd::quant {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

int CountAbove(float x, const uint32_t* thresholds, int count) {
  int c = 0;
  for (int i = 0; i < count; ++i) c += x > FloatFromBits(thresholds[i]) ? 1 : 0;
  return c;
}

TEST(EncodeNf4Test, ThresholdsTieToLowerCode) {
  for (int i = 0; i < 15; ++i) {
    const float t = FloatFromBits(kNf4ThresholdBits[i]);
    EXPECT_EQ(EncodeNf4(t), i) << "threshold " << i;
    EXPECT_EQ(EncodeNf4(std::nextafter(t, kInf)), i + 1) << "above threshold " << i;
    EXPECT_EQ(EncodeNf4(std::nextafter(t, -kInf)), i) << "below threshold " << i;
  }
}

TEST(EncodeNf4Test, TableValuesEncodeToThemselves) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(EncodeNf4(Nf4Code()[i]), i);
}

TEST(EncodeNf4Test, SpecialValues) {
  EXPECT_EQ(EncodeNf4(kNaN), 0);
  EXPECT_EQ(EncodeNf4(0.0f), 7);
  EXPECT_EQ(EncodeNf4(-0.0f), 7);
  EXPECT_EQ(EncodeNf4(kInf), 15);
  EXPECT_EQ(EncodeNf4(-kInf), 0);
}

TEST(EncodeNf4Test, TreeEqualsThresholdCountOnRandomValues) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.2f, 1.2f);
  for (int i = 0; i < 200000; ++i) {
    const float x = dist(rng);
    ASSERT_EQ(EncodeNf4(x), CountAbove(x, kNf4ThresholdBits.data(), 15)) << x;
  }
}

uint8_t Fp4Reference(float x) {
  const uint8_t sign = x < 0.0f ? 8 : 0;
  const int rank = CountAbove(std::fabs(x), kFp4ThresholdBits.data(), 7);
  return sign | kFp4PatternByRank[rank];
}

TEST(EncodeFp4Test, LiteralThresholdsTieToLowerMagnitude) {
  for (int r = 0; r < 7; ++r) {
    const float t = FloatFromBits(kFp4ThresholdBits[r]);
    EXPECT_EQ(EncodeFp4(t), kFp4PatternByRank[r]) << r;
    EXPECT_EQ(EncodeFp4(std::nextafter(t, kInf)), kFp4PatternByRank[r + 1]) << r;
    EXPECT_EQ(EncodeFp4(-t), 8 | kFp4PatternByRank[r]) << r;
    EXPECT_EQ(EncodeFp4(-std::nextafter(t, kInf)), 8 | kFp4PatternByRank[r + 1]) << r;
  }
  // t5 (0.583333) lies below the exact midpoint 7/12: 7/12 itself rounds up to 0.6667 (0b010).
  EXPECT_EQ(EncodeFp4(7.0f / 12.0f), 0b010);
}

TEST(EncodeFp4Test, SignAndSpecialValues) {
  EXPECT_EQ(EncodeFp4(0.0f), 0x0);
  EXPECT_EQ(EncodeFp4(-0.0f), 0x0);  // strict x < 0: -0.0 is positive
  EXPECT_EQ(EncodeFp4(kNaN), 0x0);
  EXPECT_EQ(EncodeFp4(-0.001f), 0x8);  // sign taken before rounding the magnitude
  EXPECT_EQ(EncodeFp4(kInf), 0x3);
  EXPECT_EQ(EncodeFp4(-kInf), 0xB);
  for (int c = 0; c < 16; ++c) {
    if (c == 8) continue;  // -0.0 encodes as +0
    EXPECT_EQ(EncodeFp4(Fp4Code()[c]), c) << c;
  }
}

TEST(EncodeFp4Test, TreeEqualsReferenceOnRandomValues) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.2f, 1.2f);
  for (int i = 0; i < 200000; ++i) {
    const float x = dist(rng);
    ASSERT_EQ(EncodeFp4(x), Fp4Reference(x)) << x;
  }
}

TEST(EncodeCountFormTest, EqualsTreeAtThresholdsAndOnDenseSample) {
  std::vector<float> xs = {0.0f, -0.0f, kNaN, kInf, -kInf, 1e-40f, -1e-40f};
  for (uint32_t t : kNf4ThresholdBits) {
    for (float x = FloatFromBits(t), k = 0; k < 3; ++k, x = std::nextafter(x, kInf))
      xs.push_back(x);
    for (float x = FloatFromBits(t), k = 0; k < 3; ++k, x = std::nextafter(x, -kInf))
      xs.push_back(x);
  }
  for (uint32_t t : kFp4ThresholdBits) {
    for (float sign : {1.0f, -1.0f}) {
      float x = sign * FloatFromBits(t);
      xs.push_back(x);
      xs.push_back(std::nextafter(x, kInf));
      xs.push_back(std::nextafter(x, -kInf));
    }
  }
  // Every float in [-1.5, 1.5] whose low 10 mantissa bits are a fixed pattern (~8M values).
  for (uint32_t hi = 0; hi < (1u << 22); ++hi) {
    const float x = FloatFromBits((hi << 10) | 0x155u);
    if (std::fabs(x) <= 1.5f) xs.push_back(x);
  }
  for (float x : xs) {
    ASSERT_EQ(EncodeNf4Count(x), EncodeNf4(x)) << x;
    ASSERT_EQ(EncodeFp4Count(x), EncodeFp4(x)) << x;
  }
}

TEST(EncodeDynamic8bitTest, MapEntriesAndSpecialValues) {
  const float* code = DynamicMap().data();
  for (int i = 0; i < 256; ++i) EXPECT_EQ(EncodeDynamic8bit(code, code[i]), i) << i;
  EXPECT_EQ(EncodeDynamic8bit(code, kNaN), 0);
  EXPECT_EQ(EncodeDynamic8bit(code, 0.0f), 127);
  EXPECT_EQ(EncodeDynamic8bit(code, 1.0f), 255);
  EXPECT_EQ(EncodeDynamic8bit(code, 2.0f), 255);
  EXPECT_EQ(EncodeDynamic8bit(code, -1.0f), 0);
}

TEST(EncodeDynamic8bitTest, PicksANearestEntry) {
  const float* code = DynamicMap().data();
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = dist(rng) * (i % 2 ? 1.0f : 1e-3f);
    const int q = EncodeDynamic8bit(code, x);
    float best = kInf;
    for (int j = 0; j < 256; ++j) best = std::fmin(best, std::fabs(code[j] - x));
    // Midpoints are rounded in float, so allow the one-rounding slack at exact ties.
    ASSERT_LE(std::fabs(code[q] - x), best * (1 + 1e-6f) + 1e-12f) << x;
  }
}

TEST(EncodeTest, ReciprocalAndInt8Rounding) {
  EXPECT_EQ(ReciprocalAbsmax(0.0f), kInf);
  EXPECT_EQ(ReciprocalAbsmax(kInf), 0.0f);
  EXPECT_EQ(ReciprocalAbsmax(4.0f), 0.25f);
  EXPECT_EQ(ReciprocalAbsmax(3.0f), 1.0f / 3.0f);
  EXPECT_EQ(RoundToInt8(2.5f), 2);
  EXPECT_EQ(RoundToInt8(3.5f), 4);
  EXPECT_EQ(RoundToInt8(-2.5f), -2);
  EXPECT_EQ(RoundToInt8(127.00001f), 127);
  EXPECT_EQ(RoundToInt8(-127.0f), -127);
  EXPECT_EQ(RoundToInt8(kNaN), 0);
  EXPECT_EQ(RoundToInt8(0.5f), 0);
  EXPECT_EQ(RoundToInt8(1.5f), 2);
  EXPECT_EQ(RoundToInt8(-0.49999997f), 0);
  EXPECT_EQ(RoundToInt8(126.5f), 126);
  EXPECT_EQ(RoundToInt8(-126.50001f), -127);
  EXPECT_EQ(Int8Scale(127.0f), 1.0f);
  EXPECT_EQ(FloatBits(kInt8DequantScale), 0x3C010204u);
  EXPECT_EQ(FloatBits(kInt8MatmulDequantScale), 0x38820610u);
}

}  // namespace
}  // namespace kbitd::quant
