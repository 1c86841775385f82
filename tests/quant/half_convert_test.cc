#include "quant/half_convert.h"

#include <random>

#include "common/dtype.h"
#include "gtest/gtest.h"

namespace kbitd::quant::internal {
namespace {

TEST(HalfConvertTest, HalfToFloatMatchesCommonForAllHalves) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t want = FloatBits(HalfToFloat(static_cast<uint16_t>(h)));
    ASSERT_EQ(FloatBits(HalfToFloatInline(static_cast<uint16_t>(h))), want) << std::hex << h;
  }
}

TEST(HalfConvertTest, FloatToHalfMatchesCommon) {
  // Every half value, its neighbours and the midpoints between consecutive halves (ties).
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    for (float x : {f, std::nextafter(f, 1e30f), std::nextafter(f, -1e30f)}) {
      ASSERT_EQ(FloatToHalfInline(x), FloatToHalf(x)) << x;
    }
    const float next = HalfToFloat(static_cast<uint16_t>(h + 1));
    if (std::isfinite(f) && std::isfinite(next) && ((h + 1) & 0x7FFF) != 0) {
      const float mid = f + (next - f) * 0.5f;
      ASSERT_EQ(FloatToHalfInline(mid), FloatToHalf(mid)) << mid;
    }
  }
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    const float x = FloatFromBits(static_cast<uint32_t>(rng()));
    ASSERT_EQ(FloatToHalfInline(x), FloatToHalf(x)) << std::hex << FloatBits(x);
  }
}

}  // namespace
}  // namespace kbitd::quant::internal
