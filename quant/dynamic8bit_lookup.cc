#include "quant/dynamic8bit_lookup.h"

#include <algorithm>
#include <cstring>

#include "common/dtype.h"
#include "quant/codebooks.h"
#include "quant/encode.h"

namespace kbitd::quant::internal {

uint32_t Dynamic8bitLookup::OrderedKey(float x) {
  const uint32_t bits = FloatBits(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

float Dynamic8bitLookup::FromOrderedKey(uint32_t key) {
  return FloatFromBits((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

std::unique_ptr<Dynamic8bitLookup> Dynamic8bitLookup::Create(const float* code256) {
  std::unique_ptr<Dynamic8bitLookup> lookup(new Dynamic8bitLookup());
  const uint32_t min_key = OrderedKey(-INFINITY);
  const uint32_t max_key = OrderedKey(INFINITY);
  auto code_at = [&](uint32_t key) { return EncodeDynamic8bit(code256, FromOrderedKey(key)); };
  if (code_at(min_key) != 0) return nullptr;
  // B[i]: the smallest key whose code is >= i (binary search; valid because the code is monotone).
  uint32_t previous = min_key;
  for (int i = 1; i < 256; ++i) {
    uint32_t lo = previous, hi = max_key;
    if (code_at(hi) < i) return nullptr;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (code_at(mid) >= i) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    lookup->boundary_key_[i] = lo;
    previous = lo;
  }
  std::fill(lookup->boundary_key_.begin() + 256, lookup->boundary_key_.end(), UINT32_MAX);
  // Code at each bucket's first key, and the most boundaries strictly inside one bucket.
  const uint32_t buckets = 1u << (32 - kShift);
  lookup->bucket_code_.assign(buckets, 0);
  std::vector<int> inside(buckets, 0);
  int b = 1;
  for (uint32_t bucket = 0; bucket < buckets; ++bucket) {
    const uint32_t start = bucket << kShift;
    while (b < 256 && lookup->boundary_key_[b] <= start) ++b;
    lookup->bucket_code_[bucket] = static_cast<uint8_t>(b - 1);
  }
  for (int i = 1; i < 256; ++i) {
    const uint32_t key = lookup->boundary_key_[i];
    if ((key & ((1u << kShift) - 1)) != 0) {
      lookup->max_in_bucket_ = std::max(lookup->max_in_bucket_, ++inside[key >> kShift]);
    }
  }
  // Spot-check the monotone model at every boundary and its neighbours.
  for (int i = 1; i < 256; ++i) {
    const uint32_t key = lookup->boundary_key_[i];
    for (uint32_t k : {key - 1, key, key + 1}) {
      if (k < min_key || k > max_key) continue;
      if (lookup->Encode(FromOrderedKey(k)) != code_at(k)) return nullptr;
    }
  }
  return lookup;
}

const Dynamic8bitLookup* Dynamic8bitLookup::ForDefaultMap() {
  static const Dynamic8bitLookup* lookup = Create(DynamicMap().data()).release();
  return lookup;
}

}  // namespace kbitd::quant::internal
