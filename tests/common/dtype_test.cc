#include "common/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace kbitd {
namespace {

TEST(DtypeTest, NamesRoundTrip) {
  for (ScalarType t : {ScalarType::kFloat32, ScalarType::kFloat16, ScalarType::kBFloat16,
                       ScalarType::kUInt8, ScalarType::kInt8, ScalarType::kInt64}) {
    EXPECT_EQ(*ScalarTypeFromSafetensorsName(SafetensorsDtypeName(t)), t);
    EXPECT_EQ(*ScalarTypeFromTorchName(TorchDtypeName(t)), t);
  }
  EXPECT_EQ(*ScalarTypeFromTorchName("torch.bfloat16"), ScalarType::kBFloat16);
  EXPECT_FALSE(ScalarTypeFromSafetensorsName("F8_E4M3X").ok());
  EXPECT_EQ(ScalarTypeSize(ScalarType::kBFloat16), 2u);
}

TEST(DtypeTest, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    uint16_t h = static_cast<uint16_t>(bits);
    float f = HalfToFloat(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), h) << std::hex << bits;
  }
}

TEST(DtypeTest, HalfRoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-1e9f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units -> 2
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DtypeTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(FloatFromBits(0x3F808000u)), 0x3F80);  // tie -> even
  EXPECT_EQ(FloatToBFloat16(FloatFromBits(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(FloatToBFloat16(FloatFromBits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(BFloat16ToFloat(0xC040), -3.0f);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

}  // namespace
}  // namespace kbitd
