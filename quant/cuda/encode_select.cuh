// Internal to quant/cuda: branch-free forms of the NF4 / FP4 encoders of quant/encode.h for the
// kernels. bnb's 4-level comparison tree (dQuantizeNF4 / dQuantizeFP4 in csrc/kernels.cu) diverges
// inside a warp on random data, so every lane pays for all 15 comparisons and branches. Here each
// level's threshold is selected from the previous levels' outcomes and compared once: the same 4
// comparisons against the same binary32 thresholds in the same order, hence the same code for
// every input (NaN included). VerifyDeviceEncoders (encoder_check.h) proves it for all 2^32 inputs.
#pragma once

#include <cstdint>

namespace kbitd::quant::cuda::internal {

// NF4: t[i] are the 15 midpoints of quant/encode.h EncodeNf4 (hex literals identical).
__device__ __forceinline__ uint8_t EncodeNf4Select(float x) {
  constexpr float t0 = -0x1.b239b0p-1f, t1 = -0x1.38a4e0p-1f, t2 = -0x1.d70900p-2f;
  constexpr float t3 = -0x1.5bd4ecp-2f, t4 = -0x1.e079d8p-3f, t5 = -0x1.1a7178p-3f;
  constexpr float t6 = -0x1.74f0e2p-5f, t7 = 0x1.45f5fep-5f, t8 = 0x1.ec90c4p-4f;
  constexpr float t9 = 0x1.a0cfc0p-3f, t10 = 0x1.2b05a8p-2f, t11 = 0x1.8ea7f2p-2f;
  constexpr float t12 = 0x1.00da08p-1f, t13 = 0x1.491b5ep-1f, t14 = 0x1.b913b4p-1f;
  const bool b3 = x > t7;
  const bool b2 = x > (b3 ? t11 : t3);
  const bool b1 = x > (b3 ? (b2 ? t13 : t9) : (b2 ? t5 : t1));
  // Leaf threshold t[2 * idx], idx = b3 b2 b1.
  const float leaf =
      b3 ? (b2 ? (b1 ? t14 : t12) : (b1 ? t10 : t8)) : (b2 ? (b1 ? t6 : t4) : (b1 ? t2 : t0));
  const int idx = (b3 ? 4 : 0) | (b2 ? 2 : 0) | (b1 ? 1 : 0);
  return static_cast<uint8_t>(2 * idx + (x > leaf ? 1 : 0));
}

// FP4: sign from x < 0, magnitude rank r from the literal thresholds of EncodeFp4, pattern =
// kFp4PatternByRank[r] = r ^ ((r << 1) & 4) ({0,1,6,7,4,5,2,3}).
__device__ __forceinline__ uint8_t EncodeFp4Select(float x) {
  constexpr float t0 = 0x1.555572p-9f, t1 = 0x1.600000p-4f, t2 = 0x1.aaaaaap-3f;
  constexpr float t3 = 0x1.2aaaaap-2f, t4 = 0x1.aaaaacp-2f, t5 = 0x1.2aaaa0p-1f;
  constexpr float t6 = 0x1.aaaaaap-1f;
  const uint8_t sign = x < 0.0f ? 0b1000 : 0b0000;
  const float m = fabsf(x);
  const bool b2 = m > t3;
  const bool b1 = m > (b2 ? t5 : t1);
  const bool b0 = m > (b2 ? (b1 ? t6 : t4) : (b1 ? t2 : t0));
  const int rank = (b2 ? 4 : 0) | (b1 ? 2 : 0) | (b0 ? 1 : 0);
  return static_cast<uint8_t>(sign | (rank ^ ((rank << 1) & 4)));
}

}  // namespace kbitd::quant::cuda::internal
