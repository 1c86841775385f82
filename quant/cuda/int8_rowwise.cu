#include <cuda_fp16.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/elements.cuh"
#include "quant/cuda/int8_rowwise.h"
#include "quant/encode.h"

namespace kbitd::quant::cuda {
namespace {

using internal::F16;
using internal::IsAligned;
using internal::Vec;

// One CTA per row (bnb kInt8VectorQuant also gives each row one block); 16 values per vector step.
inline constexpr int kRowThreads = 256;
inline constexpr int kVec = 16;

// bnb converts the weight to fp16 first (A.to(torch.float16)), even for bf16 / fp32 weights.
template <typename In>
__device__ __forceinline__ float AsHalf(typename In::Storage v) {
  const float f = In::Load(v);
  if constexpr (In::kType == ScalarType::kFloat16) {
    return f;
  } else {
    return __half2float(__float2half_rn(f));
  }
}

__device__ float RowMax(float v) {
  __shared__ float warp_max[kRowThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_max[0];
  for (int w = 1; w < kRowThreads / 32; ++w) v = fmaxf(v, warp_max[w]);
  return v;
}

// Pass 1 reads the row with cached loads so that pass 2 (streaming) finds it in L2.
template <typename In>
__global__ void __launch_bounds__(kRowThreads)
    QuantizeRowwiseKernel(const void* weight, int64_t cols, int8_t* cb, float* scb,
                          bool vectorized) {
  using T = typename In::Storage;
  const int64_t row = blockIdx.x;
  const T* src = static_cast<const T*>(weight) + row * cols;
  int8_t* dst = cb + row * cols;
  float amax = 0.0f;
  if (vectorized) {
    for (int64_t c0 = int64_t{threadIdx.x} * kVec; c0 < cols; c0 += int64_t{kRowThreads} * kVec) {
      Vec<T, kVec> v;
#pragma unroll
      for (int i = 0; i < static_cast<int>(sizeof(v.v) / 16); ++i) {
        v.v[i] = __ldg(reinterpret_cast<const uint4*>(src + c0) + i);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(AsHalf<In>(v.e[i])));
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
      amax = fmaxf(amax, fabsf(AsHalf<In>(src[c])));
    }
  }
  amax = RowMax(amax);
  if (threadIdx.x == 0) scb[row] = amax;
  const float scale = Int8Scale(amax);
  if (vectorized) {
    for (int64_t c0 = int64_t{threadIdx.x} * kVec; c0 < cols; c0 += int64_t{kRowThreads} * kVec) {
      Vec<T, kVec> v;
      internal::LoadVec(src + c0, v);
      Vec<int8_t, kVec> q;
#pragma unroll
      for (int i = 0; i < kVec; ++i) q.e[i] = RoundToInt8(__fmul_rn(AsHalf<In>(v.e[i]), scale));
      internal::StoreVec(dst + c0, q);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
      dst[c] = RoundToInt8(__fmul_rn(AsHalf<In>(src[c]), scale));
    }
  }
}

template <typename Out>
__global__ void __launch_bounds__(kRowThreads)
    DequantizeRowwiseKernel(const int8_t* cb, const float* scb, int64_t cols, void* output,
                            bool vectorized) {
  using T = typename Out::Storage;
  const int64_t row = blockIdx.x;
  const int8_t* src = cb + row * cols;
  T* dst = static_cast<T*>(output) + row * cols;
  const float s = scb[row];
  // cb * scb is NaN only for a non-finite scb: then reproduce the host's NaN bits (HostMul; a NaN
  // operand of the second multiply must come out unchanged too).
  const bool fast = isfinite(s);
  if (vectorized) {
    for (int64_t c0 = int64_t{threadIdx.x} * kVec; c0 < cols; c0 += int64_t{kRowThreads} * kVec) {
      Vec<int8_t, kVec> q;
      internal::LoadVec(src + c0, q);
      Vec<T, kVec> out;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float v = static_cast<float>(q.e[i]);
        out.e[i] = Out::Store(fast ? __fmul_rn(__fmul_rn(v, s), kInt8DequantScale)
                                   : internal::HostMul(internal::HostMul(v, s), kInt8DequantScale));
      }
      internal::StoreVec(dst + c0, out);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
      dst[c] = Out::Store(
          internal::HostMul(internal::HostMul(static_cast<float>(src[c]), s), kInt8DequantScale));
    }
  }
}

// Outlier columns (bnb int8_vectorwise_quant: outlier_cols = argwhere((|A| >= threshold).any(0))):
// flags[c] = 1 if any row has |x16[r, c]| >= threshold. flags start at 0; every writer writes 1.
// blockIdx.y strides over the rows so that tall inputs use more of the GPU.
template <typename In>
__global__ void MarkOutlierColumnsKernel(const void* x, int64_t m, int64_t k, float threshold,
                                         int64_t* flags) {
  using T = typename In::Storage;
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= k) return;
  const T* src = static_cast<const T*>(x) + c;
  bool outlier = false;
  for (int64_t r = blockIdx.y; r < m; r += gridDim.y) {
    outlier |= fabsf(AsHalf<In>(src[r * k])) >= threshold;
  }
  if (outlier) flags[c] = 1;
}

// bnb kInt8VectorQuant with a threshold: SCA over |x16| < threshold, outlier elements written as
// 0; when m > 1 (`zero_columns`) whole outlier columns are 0 as well (int8_vectorwise_quant).
template <typename In>
__global__ void __launch_bounds__(kRowThreads)
    QuantizeActivationsKernel(const void* x, int64_t k, float threshold, bool zero_columns,
                              const int64_t* flags, int8_t* ca, float* sca) {
  using T = typename In::Storage;
  const int64_t row = blockIdx.x;
  const T* src = static_cast<const T*>(x) + row * k;
  int8_t* dst = ca + row * k;
  const bool decompose = threshold > 0.0f;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += kRowThreads) {
    const float a = fabsf(AsHalf<In>(src[c]));
    if (!(decompose && a >= threshold)) amax = fmaxf(amax, a);
  }
  amax = RowMax(amax);
  if (threadIdx.x == 0) sca[row] = amax;
  const float scale = Int8Scale(amax);
  for (int64_t c = threadIdx.x; c < k; c += kRowThreads) {
    const float v = AsHalf<In>(src[c]);
    const bool zero = decompose && (fabsf(v) >= threshold || (zero_columns && flags[c] != 0));
    dst[c] = zero ? int8_t{0} : RoundToInt8(__fmul_rn(v, scale));
  }
}

// One CTA turns the 0/1 flags in `cols` into the ascending list of flagged columns, in place:
// every position written is <= the flag index it comes from, and a chunk's flags are all read
// before the first barrier that precedes its writes.
inline constexpr int kCompactThreads = 1024;

__global__ void __launch_bounds__(kCompactThreads)
    CompactOutlierColumnsKernel(int64_t k, int64_t* cols, int64_t* count) {
  __shared__ int warp_counts[kCompactThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  int64_t base = 0;
  for (int64_t c0 = 0; c0 < k; c0 += kCompactThreads) {
    const int64_t c = c0 + threadIdx.x;
    const bool flag = c < k && cols[c] != 0;
    const unsigned ballot = __ballot_sync(0xFFFFFFFFu, flag);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u));
    int total = 0;
    for (int w = 0; w < kCompactThreads / 32; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    __syncthreads();
    if (flag) cols[base + before] = c;
    base += total;
  }
  if (threadIdx.x == 0) *count = base;
}

absl::Status CheckMatrix(int64_t rows, int64_t cols, ScalarType type, const char* what) {
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape [", rows, ", ", cols, "] must not be negative"));
  }
  if (rows > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", rows, " rows are too many"));
  }
  return quant::internal::CheckFloatType(type, what);
}

}  // namespace

absl::Status QuantizeRowwiseInt8(const void* weight, ScalarType type, int64_t rows, int64_t cols,
                                 int8_t* cb, float* scb, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(rows, cols, type, "int8 weight"));
  const int64_t n = rows * cols;
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(weight, n, "int8 weight input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(cb, n, "int8 weight output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(scb, rows, "int8 SCB output"));
  if (rows == 0) return absl::OkStatus();
  const bool vectorized = cols % kVec == 0 && IsAligned(weight, 16) && IsAligned(cb, 16);
  return internal::DispatchElem(type, [&](auto in) {
    QuantizeRowwiseKernel<decltype(in)>
        <<<static_cast<unsigned>(rows), kRowThreads, 0, AsCudaStream(stream)>>>(weight, cols, cb,
                                                                                scb, vectorized);
    return LaunchStatus("QuantizeRowwiseInt8");
  });
}

absl::Status DequantizeRowwiseInt8(const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                                   ScalarType output_type, void* output, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(rows, cols, output_type, "int8 dequantization output"));
  const int64_t n = rows * cols;
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(cb, n, "int8 weight"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(scb, rows, "int8 SCB"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(output, n, "int8 dequantization output"));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  const bool vectorized = cols % kVec == 0 && IsAligned(cb, 16) && IsAligned(output, 16);
  return internal::DispatchElem(output_type, [&](auto out) {
    DequantizeRowwiseKernel<decltype(out)>
        <<<static_cast<unsigned>(rows), kRowThreads, 0, AsCudaStream(stream)>>>(cb, scb, cols,
                                                                                output, vectorized);
    return LaunchStatus("DequantizeRowwiseInt8");
  });
}

absl::Status QuantizeActivationsInt8(const void* x, ScalarType type, int64_t m, int64_t k,
                                     float threshold, int8_t* ca, float* sca, int64_t* outlier_cols,
                                     int64_t* num_outlier_cols, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(m, k, type, "int8 activations"));
  if (!(threshold >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("int8 outlier threshold must be >= 0, got ", threshold));
  }
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(x, m * k, "int8 activations input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(ca, m * k, "int8 activations output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(sca, m, "int8 SCA output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(outlier_cols, k, "int8 outlier columns"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(num_outlier_cols, 1, "int8 outlier count"));
  cudaStream_t s = AsCudaStream(stream);
  const bool decompose = threshold > 0.0f && m > 0 && k > 0;
  if (!decompose) {
    KBITD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(num_outlier_cols, 0, sizeof(int64_t), s));
  } else {
    KBITD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(outlier_cols, 0, k * sizeof(int64_t), s));
  }
  if (m == 0) return absl::OkStatus();
  return internal::DispatchElem(type, [&](auto in) -> absl::Status {
    using In = decltype(in);
    if (decompose) {
      const dim3 grid(static_cast<unsigned>((k + kRowThreads - 1) / kRowThreads),
                      static_cast<unsigned>(std::min<int64_t>(m, 64)));
      MarkOutlierColumnsKernel<In><<<grid, kRowThreads, 0, s>>>(x, m, k, threshold, outlier_cols);
      KBITD_RETURN_IF_ERROR(LaunchStatus("MarkOutlierColumns"));
    }
    QuantizeActivationsKernel<In><<<static_cast<unsigned>(m), kRowThreads, 0, s>>>(
        x, k, threshold, m > 1, outlier_cols, ca, sca);
    KBITD_RETURN_IF_ERROR(LaunchStatus("QuantizeActivationsInt8"));
    if (!decompose) return absl::OkStatus();
    CompactOutlierColumnsKernel<<<1, kCompactThreads, 0, s>>>(k, outlier_cols, num_outlier_cols);
    return LaunchStatus("CompactOutlierColumns");
  });
}

}  // namespace kbitd::quant::cuda
