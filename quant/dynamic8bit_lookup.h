// A fast, exact replacement for EncodeDynamic8bit over one fixed ascending 256-entry code (the CPU
// 8-bit quantizer's hot loop). bnb's binary search picks a nearest entry, so the code is a
// non-decreasing function of x: it is fully described by 255 boundaries B[i] = the smallest float
// whose code is >= i. A bucket table over the float's ordered bit pattern gives the code at the
// start of each bucket; the few boundaries inside a bucket are then compared directly.
// tests/quant/dynamic8bit_lookup_test.cc checks it against EncodeDynamic8bit.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace kbitd::quant::internal {

class Dynamic8bitLookup {
 public:
  // Builds the tables for `code256` (ascending); ~10k encoder calls. Returns null when the code is
  // not monotone under bnb's search (then callers use EncodeDynamic8bit).
  static std::unique_ptr<Dynamic8bitLookup> Create(const float* code256);

  // The lookup for bnb's default dynamic map (DynamicMap()), built once; null if unusable.
  static const Dynamic8bitLookup* ForDefaultMap();

  uint8_t Encode(float x) const {
    if (!(x == x)) return 0;  // NaN: bnb's search ends at code 0
    const uint32_t key = OrderedKey(x);
    uint32_t code = bucket_code_[key >> kShift];
    for (int i = 0; i < max_in_bucket_; ++i) code += key >= boundary_key_[code + 1];
    return static_cast<uint8_t>(code);
  }

  // Maps floats to uint32 so that the integer order is the float order (-0 just below +0).
  static uint32_t OrderedKey(float x);
  static float FromOrderedKey(uint32_t key);

 private:
  static constexpr int kShift = 16;
  Dynamic8bitLookup() = default;

  // boundary_key_[i] for i in 1..255; [0] unused, [256..] = UINT32_MAX sentinels (never reached
  // by a non-NaN key compare because >= UINT32_MAX is only the top NaN key).
  std::array<uint32_t, 256 + 8> boundary_key_{};
  std::vector<uint8_t> bucket_code_;
  int max_in_bucket_ = 0;
};

}  // namespace kbitd::quant::internal
