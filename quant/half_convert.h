// Inline fp16 <-> fp32 conversions for the CPU kernels' inner loops, bit-identical to
// kbitd::HalfToFloat / FloatToHalf in common/dtype.cc (tested over all 65536 halves and sampled
// floats in tests/quant/half_convert_test.cc) but branch-light so that loops stay fast.
// Float -> half uses round-to-nearest-even by integer rounding of the shifted mantissa, and float
// addition for subnormals (the method of F. Giesen's "float_to_half_fast3_rtne", public domain).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace kbitd::quant::internal {

inline float HalfToFloatInline(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7FFFu;
  // Shifting puts the half exponent/mantissa into float position; scaling by 2^112 re-biases the
  // exponent (exact for normals and subnormals alike).
  const uint32_t scaled = FloatBits(FloatFromBits(magnitude << 13) * 0x1p112f);
  const uint32_t special = 0x7F800000u | ((magnitude & 0x3FFu) << 13);  // Inf / NaN
  // A mask select instead of a branch keeps conversion loops vectorizable.
  const uint32_t is_special = 0u - static_cast<uint32_t>(magnitude >= 0x7C00u);
  return FloatFromBits((scaled & ~is_special) | (special & is_special) | sign);
}

inline uint16_t FloatToHalfInline(float x) {
  uint32_t bits = FloatBits(x);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t out;
  if (bits >= 0x47800000u) {  // >= 65536, Inf or NaN
    out = bits > 0x7F800000u ? 0x7E00u : 0x7C00u;
  } else if (bits < 0x38800000u) {  // half subnormal or zero
    // Adding 0.5 aligns the half-subnormal unit (2^-24) with the float ulp; the FPU rounds RNE.
    out = FloatBits(FloatFromBits(bits) + 0.5f) - 0x3F000000u;
  } else {  // normal: re-bias, round mantissa to 10 bits
    const uint32_t mantissa_odd = (bits >> 13) & 1u;
    bits += 0xC8000FFFu;  // ((15 - 127) << 23) + 0xFFF, mod 2^32
    bits += mantissa_odd;
    out = bits >> 13;  // a carry into the exponent (or Inf) is correct
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

}  // namespace kbitd::quant::internal
