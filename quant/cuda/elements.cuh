// Internal to quant/cuda: device element types for float32 / float16 / bfloat16 whose conversions
// give the same bits as common/dtype.h (LoadAsFloat / StoreFromFloat) on the host, and 16-byte
// vector access. Only NaN payloads are not reproduced on load; no kernel result depends on them.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace kbitd::quant::cuda::internal {

struct F32 {
  using Storage = float;
  static constexpr ScalarType kType = ScalarType::kFloat32;
  __device__ static float Load(float v) { return v; }
  __device__ static float Store(float v) { return v; }
};

struct F16 {
  using Storage = uint16_t;
  static constexpr ScalarType kType = ScalarType::kFloat16;
  __device__ static float Load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  // IEEE round-to-nearest-even with overflow to Inf (cvt.rn.f16.f32); NaN becomes sign|0x7E00 as
  // in FloatToHalf.
  __device__ static uint16_t Store(float v) {
    if (v != v) return static_cast<uint16_t>(((__float_as_uint(v) >> 16) & 0x8000u) | 0x7E00u);
    return __half_as_ushort(__float2half_rn(v));
  }
};

struct BF16 {
  using Storage = uint16_t;
  static constexpr ScalarType kType = ScalarType::kBFloat16;
  __device__ static float Load(uint16_t v) {
    return __uint_as_float(static_cast<uint32_t>(v) << 16);
  }
  // Round-to-nearest-even on the bits, NaN kept quiet with its payload: FloatToBFloat16.
  __device__ static uint16_t Store(float v) {
    const uint32_t bits = __float_as_uint(v);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
    return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
};

// NaN results as the x86-64 host computes them (SSE): a NaN operand comes out quietened, an invalid
// operation on non-NaN operands (0 * Inf, Inf - Inf) gives the default NaN 0xFFC00000. CUDA returns
// 0x7FFFFFFF in every case. Only needed where a NaN can reach the output bytes (dequantization).
__device__ __forceinline__ float HostNaN(float a, float b) {
  if (a != a) return __uint_as_float(__float_as_uint(a) | 0x00400000u);
  if (b != b) return __uint_as_float(__float_as_uint(b) | 0x00400000u);
  return __uint_as_float(0xFFC00000u);
}

__device__ __forceinline__ float HostMul(float a, float b) {
  const float r = __fmul_rn(a, b);
  return r == r ? r : HostNaN(a, b);
}

__device__ __forceinline__ float HostAdd(float a, float b) {
  const float r = __fadd_rn(a, b);
  return r == r ? r : HostNaN(a, b);
}

// Calls fn(Elem{}) with the element type for `type` (float32, float16 or bfloat16; the caller
// validated it).
template <typename Fn>
auto DispatchElem(ScalarType type, Fn&& fn) {
  switch (type) {
    case ScalarType::kFloat16:
      return fn(F16{});
    case ScalarType::kBFloat16:
      return fn(BF16{});
    default:
      return fn(F32{});
  }
}

// kCount consecutive values of T moved as 16-byte vectors (sizeof(T) * kCount is a multiple of 16).
template <typename T, int kCount>
union Vec {
  static_assert(sizeof(T) * kCount % 16 == 0);
  uint4 v[sizeof(T) * kCount / 16];
  T e[kCount];
};

// Streaming (evict-first) 16-byte loads and stores: every byte is touched once.
template <typename T, int kCount>
__device__ __forceinline__ void LoadVec(const T* src, Vec<T, kCount>& dst) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(dst.v) / 16); ++i) {
    dst.v[i] = __ldcs(reinterpret_cast<const uint4*>(src) + i);
  }
}

template <typename T, int kCount>
__device__ __forceinline__ void StoreVec(T* dst, const Vec<T, kCount>& src) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(src.v) / 16); ++i) {
    __stcs(reinterpret_cast<uint4*>(dst) + i, src.v[i]);
  }
}

inline bool IsAligned(const void* p, uintptr_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace kbitd::quant::cuda::internal
