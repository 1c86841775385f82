// Internal to quant/cuda: device element types for float32 / float16 / bfloat16 whose conversions
// give the same bits as common/dtype.h (LoadAsFloat / StoreFromFloat) on the host, and 16-byte
// vector access. Only NaN payloads are not reproduced on load; no kernel result depends on them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace kbitd::quant::cuda::internal {

struct F32 {
  using Storage = float;
  static constexpr ScalarType kType = ScalarType::kFloat32;
  __device__ static float Load(float v) { return v; }
  __device__ static float LoadExact(float v) { return v; }
  __device__ static float Store(float v) { return v; }
};

struct F16 {
  using Storage = uint16_t;
  static constexpr ScalarType kType = ScalarType::kFloat16;
  __device__ static float Load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  // Load with a NaN's sign and payload kept as HalfToFloat does (no quiet bit added): for values
  // that reach output bytes through float arithmetic (LLM.int8 bias and outlier correction).
  __device__ static float LoadExact(uint16_t v) {
    if ((v & 0x7FFFu) <= 0x7C00u) return Load(v);
    return __uint_as_float((static_cast<uint32_t>(v & 0x8000u) << 16) | 0x7F800000u |
                           (static_cast<uint32_t>(v & 0x3FFu) << 13));
  }
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
  __device__ static float LoadExact(uint16_t v) { return Load(v); }
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

// std::fma's NaN on x86-64 (glibc: vfmadd213ss, or the double-precision fallback): the first NaN
// operand in a, b, c order comes out quietened, an invalid operation gives the default NaN.
__device__ __forceinline__ float HostFma(float a, float b, float c) {
  const float r = __fmaf_rn(a, b, c);
  if (r == r) return r;
  if (a != a || b != b) return HostNaN(a, b);
  if (c != c) return __uint_as_float(__float_as_uint(c) | 0x00400000u);
  return __uint_as_float(0xFFC00000u);
}

// HalfToFloat(FloatToHalf(v)): rounding to fp16 and back; a NaN keeps only its sign (0x7E00).
__device__ __forceinline__ float RoundThroughHalf(float v) {
  if (v != v) return __uint_as_float((__float_as_uint(v) & 0x80000000u) | 0x7FC00000u);
  return __half2float(__float2half_rn(v));
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
  uint32_t w[sizeof(T) * kCount / 4];
  T e[kCount];
};

// Out::Store of kCount finite values (no NaN to reproduce): 16-bit outputs convert two values per
// instruction (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32), which rounds to nearest even like Store.
template <typename Out, int kCount>
__device__ __forceinline__ void StoreFinite(const float (&value)[kCount],
                                            Vec<typename Out::Storage, kCount>& out) {
  static_assert(kCount % 2 == 0);
#pragma unroll
  for (int j = 0; j < kCount / 2; ++j) {
    if constexpr (Out::kType == ScalarType::kFloat32) {
      out.e[2 * j] = value[2 * j];
      out.e[2 * j + 1] = value[2 * j + 1];
    } else if constexpr (Out::kType == ScalarType::kBFloat16) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(value[2 * j], value[2 * j + 1]);
      out.w[j] = *reinterpret_cast<const uint32_t*>(&pair);
    } else {
      const __half2 pair = __floats2half2_rn(value[2 * j], value[2 * j + 1]);
      out.w[j] = *reinterpret_cast<const uint32_t*>(&pair);
    }
  }
}

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
