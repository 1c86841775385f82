#include <cuda_fp16.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/elements.cuh"
#include "quant/cuda/int8_matmul.h"
#include "quant/cuda/int8_rowwise.h"
#include "quant/encode.h"

namespace kbitd::quant::cuda {
namespace {

using internal::HostAdd;
using internal::HostFma;
using internal::HostMul;
using internal::RoundThroughHalf;

// A plain tiled int32 GEMM: a 64x64 output tile per CTA, 4x4 outputs per thread, k in steps of 32
// bytes through shared memory, four int8 products per __dp4a. The sums are exact integers (as
// cuBLASLt's int8 GEMM in bnb int8_linear_matmul), so any order gives the CPU's C.
inline constexpr int kTile = 64;
inline constexpr int kStepWords = 8;  // 32 int8 of k per step
inline constexpr int kThreads = 256;  // 16 x 16

// Four consecutive int8 of row `row` starting at column c, zero past the matrix (k not a multiple
// of 4, partial tiles). `words`: rows are 4-byte aligned and k % 4 == 0.
__device__ __forceinline__ int LoadWord(const int8_t* mat, int64_t row, int64_t rows, int64_t k,
                                        int64_t c, bool words) {
  if (row >= rows || c >= k) return 0;
  const int8_t* p = mat + row * k + c;
  if (words) return *reinterpret_cast<const int*>(p);
  uint32_t word = 0;
  for (int b = 0; b < 4 && c + b < k; ++b) word |= uint32_t{static_cast<uint8_t>(p[b])} << (8 * b);
  return static_cast<int>(word);
}

// kdequant_mm_int32_fp16 (bnb csrc/kernels.cu) in the CPU reference's operation order; Host* give
// the host's NaN bits where a NaN can reach the output.
template <typename Out>
__global__ void __launch_bounds__(kThreads)
    Int8MatmulDequantKernel(const int8_t* ca, const float* sca, int64_t m, int64_t k,
                            const int8_t* cb, const float* scb, int64_t n,
                            const typename Out::Storage* bias, typename Out::Storage* y,
                            bool words) {
  __shared__ int a_tile[kTile][kStepWords + 1];  // +1: no bank conflicts on the b_tile reads
  __shared__ int b_tile[kTile][kStepWords + 1];
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  const int64_t row0 = int64_t{blockIdx.y} * kTile;
  const int64_t col0 = int64_t{blockIdx.x} * kTile;
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kStepWords * 4) {
    for (int w = threadIdx.x; w < kTile * kStepWords; w += kThreads) {
      const int r = w / kStepWords;
      const int64_t c = k0 + (w % kStepWords) * 4;
      a_tile[r][w % kStepWords] = LoadWord(ca, row0 + r, m, k, c, words);
      b_tile[r][w % kStepWords] = LoadWord(cb, col0 + r, n, k, c, words);
    }
    __syncthreads();
#pragma unroll
    for (int kw = 0; kw < kStepWords; ++kw) {
      int a[4];
      int b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = a_tile[ty + 16 * i][kw];
        b[i] = b_tile[tx + 16 * i][kw];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  // bnb fuses the bias only when it is fp16; any other bias is added to the fp16 result.
  const bool fp16_bias = bias != nullptr && Out::kType == ScalarType::kFloat16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = col0 + tx + 16 * j;
      if (o >= n) continue;
      const float scaled = HostMul(HostMul(__int2float_rn(acc[i][j]), sca[r]), scb[o]);
      const float fused_bias = fp16_bias ? Out::LoadExact(bias[o]) : 0.0f;
      float out = RoundThroughHalf(HostFma(scaled, kInt8MatmulDequantScale, fused_bias));
      if (bias != nullptr && !fp16_bias) {
        out = RoundThroughHalf(HostAdd(out, Out::LoadExact(bias[o])));
      }
      y[r * n + o] = Out::Store(out);
    }
  }
}

// bnb int8_mixed_scaled_mm's output.addmm(x[:, cols], subB), as the CPU reference: subB =
// int8_vectorwise_dequant(CB[:, cols], SCB) rounded to x's dtype, an fp32 sum over the outlier
// columns in ascending order, one rounding when added to y. No outliers: y is left untouched.
// When both operands of an add are NaN, x86 returns the first one, and GCC 12 -O3 orders the CPU
// reference's adds as (x * subB) + sum, then y + sum (fp16/bf16) or sum + y (fp32): the operand
// orders below copy that, so that even the NaN signs match (objdump of quant/int8_rowwise.cc.o).
template <typename X>
__global__ void OutlierCorrectionKernel(const void* x, int64_t m, int64_t k, const int8_t* cb,
                                        const float* scb, int64_t n, const int64_t* cols,
                                        const int64_t* num_cols, void* y) {
  using T = typename X::Storage;
  const int64_t ncols = *num_cols;
  if (ncols == 0) return;
  const T* xs = static_cast<const T*>(x);
  T* ys = static_cast<T*>(y);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < m * n; i += stride) {
    const int64_t r = i / n;
    const int64_t o = i % n;
    float sum = 0.0f;
    for (int64_t j = 0; j < ncols; ++j) {
      const int64_t c = cols[j];
      const float w =
          HostMul(HostMul(static_cast<float>(cb[o * k + c]), scb[o]), kInt8DequantScale);
      sum = HostAdd(HostMul(X::LoadExact(xs[r * k + c]), X::LoadExact(X::Store(w))), sum);
    }
    const float y_old = X::LoadExact(ys[i]);
    ys[i] = X::Store(X::kType == ScalarType::kFloat32 ? HostAdd(sum, y_old) : HostAdd(y_old, sum));
  }
}

absl::Status CheckMatmul(int64_t m, int64_t k, int64_t n, ScalarType type, const char* what) {
  if (m < 0 || k < 0 || n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": m, k, n = ", m, ", ", k, ", ", n, " must not be negative"));
  }
  if ((m + kTile - 1) / kTile > 65535 || (n + kTile - 1) / kTile > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": [", m, ", ", n, "] is too large"));
  }
  return quant::internal::CheckFloatType(type, what);
}

// Workspace layout of Int8Linear: outlier count, outlier columns, SCA, codes; 16-byte aligned
// parts.
constexpr int64_t AlignUp(int64_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

absl::Status Int8MatmulDequant(const int8_t* ca, const float* sca, int64_t m, int64_t k,
                               const int8_t* cb, const float* scb, int64_t n, const void* bias,
                               ScalarType out_type, void* y, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckMatmul(m, k, n, out_type, "int8 matmul output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(ca, m * k, "int8 matmul activations"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(sca, m, "int8 matmul SCA"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(cb, n * k, "int8 matmul weight"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(scb, n, "int8 matmul SCB"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(y, m * n, "int8 matmul output"));
  if (m == 0 || n == 0) return absl::OkStatus();
  const bool words = k % 4 == 0 && internal::IsAligned(ca, 4) && internal::IsAligned(cb, 4);
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile),
                  static_cast<unsigned>((m + kTile - 1) / kTile));
  return internal::DispatchElem(out_type, [&](auto out) {
    using Out = decltype(out);
    using T = typename Out::Storage;
    Int8MatmulDequantKernel<Out><<<grid, kThreads, 0, AsCudaStream(stream)>>>(
        ca, sca, m, k, cb, scb, n, static_cast<const T*>(bias), static_cast<T*>(y), words);
    return LaunchStatus("Int8MatmulDequant");
  });
}

size_t Int8LinearWorkspaceBytes(int64_t m, int64_t k) {
  return static_cast<size_t>(AlignUp(sizeof(int64_t)) + AlignUp(k * sizeof(int64_t)) +
                             AlignUp(m * sizeof(float)) + AlignUp(m * k));
}

absl::Status Int8Linear(const void* x, ScalarType x_type, int64_t m, int64_t k, const int8_t* cb,
                        const float* scb, int64_t n, const void* bias, float threshold,
                        void* workspace, void* y, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckMatmul(m, k, n, x_type, "int8 linear"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(workspace, 1, "int8 linear workspace"));
  if (!internal::IsAligned(workspace, 16)) {
    return absl::InvalidArgumentError("int8 linear workspace must be 16-byte aligned");
  }
  char* ws = static_cast<char*>(workspace);
  auto* num_cols = reinterpret_cast<int64_t*>(ws);
  auto* cols = reinterpret_cast<int64_t*>(ws + AlignUp(sizeof(int64_t)));
  auto* sca = reinterpret_cast<float*>(reinterpret_cast<char*>(cols) + AlignUp(k * 8));
  auto* ca = reinterpret_cast<int8_t*>(reinterpret_cast<char*>(sca) + AlignUp(m * 4));
  KBITD_RETURN_IF_ERROR(
      QuantizeActivationsInt8(x, x_type, m, k, threshold, ca, sca, cols, num_cols, stream));
  KBITD_RETURN_IF_ERROR(Int8MatmulDequant(ca, sca, m, k, cb, scb, n, bias, x_type, y, stream));
  if (threshold == 0.0f || m == 0 || n == 0 || k == 0) return absl::OkStatus();
  KBITD_ASSIGN_OR_RETURN(const int sms, MultiprocessorCount());
  const int64_t blocks = std::min<int64_t>((m * n + 255) / 256, int64_t{sms} * 8);
  return internal::DispatchElem(x_type, [&](auto elem) {
    OutlierCorrectionKernel<decltype(elem)>
        <<<static_cast<unsigned>(blocks), 256, 0, AsCudaStream(stream)>>>(x, m, k, cb, scb, n, cols,
                                                                          num_cols, y);
    return LaunchStatus("Int8LinearOutlierCorrection");
  });
}

}  // namespace kbitd::quant::cuda
