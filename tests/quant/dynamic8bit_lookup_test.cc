#include "quant/dynamic8bit_lookup.h"

#include <cmath>
#include <limits>
#include <random>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/codebooks.h"
#include "quant/encode.h"

namespace kbitd::quant::internal {
namespace {

TEST(Dynamic8bitLookupTest, OrderedKeyPreservesFloatOrder) {
  const float xs[] = {-INFINITY, -1.0f, -1e-30f, -0.0f, 0.0f, 1e-40f, 0.5f, 1.0f, INFINITY};
  for (size_t i = 0; i + 1 < std::size(xs); ++i) {
    EXPECT_LT(Dynamic8bitLookup::OrderedKey(xs[i]), Dynamic8bitLookup::OrderedKey(xs[i + 1]));
    EXPECT_EQ(FloatBits(Dynamic8bitLookup::FromOrderedKey(Dynamic8bitLookup::OrderedKey(xs[i]))),
              FloatBits(xs[i]));
  }
}

TEST(Dynamic8bitLookupTest, EqualsBnbSearchForTheDefaultMap) {
  const Dynamic8bitLookup* lookup = Dynamic8bitLookup::ForDefaultMap();
  ASSERT_NE(lookup, nullptr);
  const float* code = DynamicMap().data();
  // Every map entry, every midpoint and their ulp neighbours.
  for (int i = 0; i < 256; ++i) {
    float points[] = {code[i], i < 255 ? (code[i] + code[i + 1]) * 0.5f : 1.0f};
    for (float p : points) {
      for (float x = std::nextafter(std::nextafter(p, -2.0f), -2.0f), k = 0; k < 5;
           ++k, x = std::nextafter(x, 2.0f)) {
        ASSERT_EQ(lookup->Encode(x), EncodeDynamic8bit(code, x)) << x;
      }
    }
  }
  for (float x : {0.0f, -0.0f, INFINITY, -INFINITY, std::numeric_limits<float>::quiet_NaN(), 1e-40f,
                  -1e-40f, 2.0f, -2.0f}) {
    EXPECT_EQ(lookup->Encode(x), EncodeDynamic8bit(code, x)) << x;
  }
  // Every float in [-1.25, 1.25] whose low 10 mantissa bits are a fixed pattern (~2M values).
  for (uint32_t hi = 0; hi < (1u << 22); ++hi) {
    const float x = FloatFromBits((hi << 10) | 0x2AAu);
    if (std::fabs(x) <= 1.25f) {
      ASSERT_EQ(lookup->Encode(x), EncodeDynamic8bit(code, x)) << x;
    }
  }
}

}  // namespace
}  // namespace kbitd::quant::internal
