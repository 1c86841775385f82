// Per-element encoders shared by the CPU reference and the CUDA kernels (bnb-spec §1.2, §1.3, §3.2,
// §6.1). The same inline code compiles for host and device, which is what makes CPU and CUDA bytes
// identical. Source: bitsandbytes csrc/kernels.cu dQuantizeNF4, dQuantizeFP4, dQuantize<0>,
// kInt8VectorQuant. Thresholds are written as hex-float literals equal, bit for bit, to bnb's
// decimal literals (checked against quant/codebooks.h by tests/quant/encode_test.cc).
//
// Numerics: bnb builds with --use_fast_math, so its 1/absmax and 127/absmax are approximate. kbitd
// uses IEEE round-to-nearest on both CPU and CUDA (ReciprocalAbsmax, Int8Scale); elements whose
// scaled value lies within ~2 ulp of a decision threshold may therefore encode differently from
// bnb (docs/quantization.md). Translation units using these must not contract a*b+c into FMA where
// bnb does not (quant/ is compiled with -ffp-contract=off; CUDA code must avoid fast-math).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define KBITD_HOST_DEVICE __host__ __device__
#else
#define KBITD_HOST_DEVICE
#endif

namespace kbitd::quant {

// NF4: code = #{i : x > t[i]} over the 15 midpoints of the NF4 table, as bnb's 4-level tree of
// strict '>' comparisons. Ties go to the lower code, +-0.0 -> 7, NaN -> 0.
KBITD_HOST_DEVICE inline uint8_t EncodeNf4(float x) {
  if (x > 0x1.45f5fep-5f) {                     // t7 0.03979014977812767
    if (x > 0x1.8ea7f2p-2f) {                   // t11 0.3893125355243683
      if (x > 0x1.491b5ep-1f) {                 // t13 0.6427869200706482
        return (x > 0x1.b913b4p-1f) ? 15 : 14;  // t14 0.8614784181118011
      }
      return (x > 0x1.00da08p-1f) ? 13 : 12;  // t12 0.5016634166240692
    }
    if (x > 0x1.a0cfc0p-3f) {                 // t9 0.2035212516784668
      return (x > 0x1.2b05a8p-2f) ? 11 : 10;  // t10 0.2920137718319893
    }
    return (x > 0x1.ec90c4p-4f) ? 9 : 8;  // t8 0.1202552504837513
  }
  if (x > -0x1.5bd4ecp-2f) {                 // t3 -0.33967943489551544
    if (x > -0x1.1a7178p-3f) {               // t5 -0.13791173323988914
      return (x > -0x1.74f0e2p-5f) ? 7 : 6;  // t6 -0.045525018125772476
    }
    return (x > -0x1.e079d8p-3f) ? 5 : 4;  // t4 -0.23460740596055984
  }
  if (x > -0x1.38a4e0p-1f) {               // t1 -0.6106329262256622
    return (x > -0x1.d70900p-2f) ? 3 : 2;  // t2 -0.4599952697753906
  }
  return (x > -0x1.b239b0p-1f) ? 1 : 0;  // t0 -0.8480964004993439
}

// FP4 (sign bit 3 + 3-bit magnitude pattern). The sign is taken before rounding with a strict
// x < 0 (so -0.0 and NaN are positive, tiny negatives give 0x8); magnitude thresholds are bnb's
// literal binary32 values (t0, t4, t5 are not exact midpoints).
KBITD_HOST_DEVICE inline uint8_t EncodeFp4(float x) {
  const uint8_t sign = x < 0.0f ? 0b1000 : 0b0000;
  const float m = fabsf(x);
  if (m > 0x1.2aaaaap-2f) {                                  // 0.29166667
    if (m > 0x1.2aaaa0p-1f) {                                // 0.583333
      return sign | ((m > 0x1.aaaaaap-1f) ? 0b011 : 0b010);  // 0.8333333
    }
    return sign | ((m > 0x1.aaaaacp-2f) ? 0b101 : 0b100);  // 0.4166667
  }
  if (m > 0x1.600000p-4f) {                                // 0.0859375
    return sign | ((m > 0x1.aaaaaap-3f) ? 0b111 : 0b110);  // 0.20833333
  }
  return sign | ((m > 0x1.555572p-9f) ? 0b001 : 0b000);  // 0.00260417
}

// EncodeNf4 written as a threshold count, code = #{i : x > t[i]}: the same result for every float
// (tests/quant/encode_test.cc checks all thresholds and a dense sample), but branch-free, so the
// CPU kernels vectorize it.
KBITD_HOST_DEVICE inline uint8_t EncodeNf4Count(float x) {
  return static_cast<uint8_t>((x > -0x1.b239b0p-1f) + (x > -0x1.38a4e0p-1f) +
                              (x > -0x1.d70900p-2f) + (x > -0x1.5bd4ecp-2f) +
                              (x > -0x1.e079d8p-3f) + (x > -0x1.1a7178p-3f) +
                              (x > -0x1.74f0e2p-5f) + (x > 0x1.45f5fep-5f) + (x > 0x1.ec90c4p-4f) +
                              (x > 0x1.a0cfc0p-3f) + (x > 0x1.2b05a8p-2f) + (x > 0x1.8ea7f2p-2f) +
                              (x > 0x1.00da08p-1f) + (x > 0x1.491b5ep-1f) + (x > 0x1.b913b4p-1f));
}

// EncodeFp4 as a count: rank r = #{t : |x| > t}; the 3-bit pattern of rank r
// ([0, 1, 6, 7, 4, 5, 2, 3]) is r with bit 2 flipped when bit 1 of r is set.
KBITD_HOST_DEVICE inline uint8_t EncodeFp4Count(float x) {
  const float m = fabsf(x);
  const int r = (m > 0x1.555572p-9f) + (m > 0x1.600000p-4f) + (m > 0x1.aaaaaap-3f) +
                (m > 0x1.2aaaaap-2f) + (m > 0x1.aaaaacp-2f) + (m > 0x1.2aaaa0p-1f) +
                (m > 0x1.aaaaaap-1f);
  return static_cast<uint8_t>((x < 0.0f ? 0b1000 : 0) | (r ^ (((r >> 1) & 1) << 2)));
}

// bnb dQuantize<0>: 7-step binary search in the 256-entry map `code` (ascending), then nearest of
// the bracketing entries with ties to the final pivot; NaN ends at 0. A literal port so that the
// boundary handling (code[0] / code[255] neighbours) is identical.
KBITD_HOST_DEVICE inline uint8_t EncodeDynamic8bit(const float* code, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = -1.0f;
  float upper = 1.0f;
  float val = code[pivot];
  // Selects instead of if/else (same result): the data-dependent branches mispredict half the time.
  for (int step = 64; step > 0; step >>= 1) {
    const bool up = x > val;
    lower_pivot = up ? pivot : lower_pivot;
    lower = up ? val : lower;
    upper_pivot = up ? upper_pivot : pivot;
    upper = up ? upper : val;
    pivot += up ? step : -step;
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

// 1/absmax rounded to nearest (bnb: fast-math 1.0f/absmax). absmax 0 gives +Inf, so every element
// of an all-zero block scales to 0*Inf = NaN and encodes as code 0, exactly as in bnb.
KBITD_HOST_DEVICE inline float ReciprocalAbsmax(float absmax) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(absmax);
#else
  return 1.0f / absmax;
#endif
}

// LLM.int8() row scale 127/absmax rounded to nearest (bnb: __fdividef(127.0f, absmax)).
KBITD_HOST_DEVICE inline float Int8Scale(float absmax) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(127.0f, absmax);
#else
  return 127.0f / absmax;
#endif
}

// __float2int_rn then (int8) as in kInt8VectorQuant: round half to even; NaN gives 0 (CUDA's
// conversion of NaN). |x| <= 127*(1+eps) for in-range inputs, so the result fits int8.
KBITD_HOST_DEVICE inline int8_t RoundToInt8(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<int8_t>(__float2int_rn(x));
#else
  if (!(x == x)) return 0;
  // Adding and subtracting 1.5 * 2^23 rounds half to even in the default rounding mode, for
  // |x| < 2^22 (int8 codes are within +-127 * (1 + eps)); larger values go through nearbyintf.
  if (fabsf(x) >= 0x1p22f) return static_cast<int8_t>(static_cast<int>(nearbyintf(x)));
  return static_cast<int8_t>(static_cast<int>((x + 0x1.8p23f) - 0x1.8p23f));
#endif
}

// f32(1/127) (0x3C010204), the constant of bnb int8_vectorwise_dequant.
inline constexpr float kInt8DequantScale = 0x1.020408p-7f;
// f32(1/(127*127)) = 6.200012e-05f (0x38820610), the constant of bnb kdequant_mm_int32_fp16.
inline constexpr float kInt8MatmulDequantScale = 0x1.040c20p-14f;

}  // namespace kbitd::quant
