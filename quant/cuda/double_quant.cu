#include <cfloat>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_internal.h"
#include "quant/cuda/blockwise_kernels.cuh"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/double_quant.h"

namespace kbitd::quant::cuda {
namespace {

using internal::F32;

// The CPU reference sums the absmax sequentially in double. A parallel sum gives the same double
// whenever no partial sum of any order rounds: all values are finite, non-negative multiples of
// 2^lsb (lsb = the lowest set bit over all values) and the total is below 2^(53 + lsb). The kernels
// reduce (sum, lowest set bit, any negative or non-finite value) in parallel; when that exactness
// condition fails (all-NaN blocks give -FLT_MAX, Inf inputs give Inf, or a dynamic range over
// ~2^29), one thread repeats the sum in the CPU's order instead. Either way the offset is the
// CPU's float.
struct SumRecord {
  double sum;
  int lowest_bit;  // exponent of the lowest set bit over the non-zero values (INT_MAX if none)
  int irregular;   // 1 if some value is negative or not finite
};

inline constexpr int kReduceThreads = 256;
// Each CTA reduces kChunk values, kPerThread per thread with all loads in flight at once; above one
// chunk every CTA writes a SumRecord into the (aligned) codes buffer, which holds nblocks >= kChunk
// bytes, over 100x what the records need.
inline constexpr int kPerThread = 8;
inline constexpr int64_t kChunk = int64_t{kReduceThreads} * kPerThread;

__device__ int LowestSetBitExponent(float v) {
  const uint32_t bits = __float_as_uint(v) & 0x7FFFFFFFu;
  const int exponent = static_cast<int>(bits >> 23);
  const uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0) return -149 + __ffs(static_cast<int>(mantissa)) - 1;  // subnormal
  return exponent - 150 + __ffs(static_cast<int>(mantissa | 0x800000u)) - 1;
}

__device__ SumRecord CombineRecords(SumRecord a, const SumRecord& b) {
  a.sum = __dadd_rn(a.sum, b.sum);
  a.lowest_bit = min(a.lowest_bit, b.lowest_bit);
  a.irregular |= b.irregular;
  return a;
}

__device__ SumRecord RecordOf(float v) {
  if (!(v >= 0.0f) || isinf(v)) return {0.0, INT_MAX, 1};
  if (v == 0.0f) return {0.0, INT_MAX, 0};
  return {static_cast<double>(v), LowestSetBitExponent(v), 0};
}

// Combines every thread's record; the result is valid in thread 0.
__device__ SumRecord CtaCombine(SumRecord r) {
  __shared__ SumRecord warp_records[kReduceThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    SumRecord other;
    other.sum = __shfl_down_sync(0xFFFFFFFFu, r.sum, offset);
    other.lowest_bit = __shfl_down_sync(0xFFFFFFFFu, r.lowest_bit, offset);
    other.irregular = __shfl_down_sync(0xFFFFFFFFu, r.irregular, offset);
    r = CombineRecords(r, other);
  }
  if (threadIdx.x % 32 == 0) warp_records[threadIdx.x / 32] = r;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kReduceThreads / 32; ++w) r = CombineRecords(r, warp_records[w]);
  }
  return r;
}

// Reduces absmax[begin, min(begin + kChunk, n)) over the CTA; valid in thread 0.
__device__ SumRecord ReduceChunk(const float* absmax, int64_t begin, int64_t n) {
  float v[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t i = begin + j * kReduceThreads + threadIdx.x;
    v[j] = i < n ? absmax[i] : 0.0f;
  }
  SumRecord r{0.0, INT_MAX, 0};
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) r = CombineRecords(r, RecordOf(v[j]));
  return CtaCombine(r);
}

__global__ void __launch_bounds__(kReduceThreads)
    PartialSumKernel(const float* absmax, int64_t n, SumRecord* records) {
  const SumRecord r = ReduceChunk(absmax, static_cast<int64_t>(blockIdx.x) * kChunk, n);
  if (threadIdx.x == 0) records[blockIdx.x] = r;
}

// One CTA. With records == nullptr it reduces absmax itself (n <= kChunk).
__global__ void __launch_bounds__(kReduceThreads)
    FinishOffsetKernel(const float* absmax, int64_t n, const SumRecord* records, int record_count,
                       float* offset) {
  SumRecord r{0.0, INT_MAX, 0};
  if (records == nullptr) {
    r = ReduceChunk(absmax, 0, n);
  } else {
    constexpr int kUnroll = 4;
    for (int base = 0; base < record_count; base += kReduceThreads * kUnroll) {
      SumRecord part[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int i = base + j * kReduceThreads + static_cast<int>(threadIdx.x);
        part[j] = i < record_count ? records[i] : SumRecord{0.0, INT_MAX, 0};
      }
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) r = CombineRecords(r, part[j]);
    }
    r = CtaCombine(r);
  }
  if (threadIdx.x != 0) return;
  const bool exact =
      !r.irregular && (r.lowest_bit == INT_MAX || r.sum < scalbn(1.0, 53 + r.lowest_bit));
  double sum = r.sum;
  if (!exact) {  // the CPU's order, one value at a time
    sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum = __dadd_rn(sum, static_cast<double>(absmax[i]));
  }
  *offset = __double2float_rn(__ddiv_rn(sum, static_cast<double>(n)));
}

absl::Status ComputeOffset(const float* absmax, int64_t nblocks, uint8_t* scratch, float* offset,
                           cudaStream_t stream) {
  if (nblocks <= kChunk) {
    FinishOffsetKernel<<<1, kReduceThreads, 0, stream>>>(absmax, nblocks, nullptr, 0, offset);
    return LaunchStatus("DoubleQuantizeAbsmax offset");
  }
  const int64_t chunks = (nblocks + kChunk - 1) / kChunk;
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(scratch) + 15) & ~uintptr_t{15};
  auto* records = reinterpret_cast<SumRecord*>(aligned);
  PartialSumKernel<<<static_cast<unsigned>(chunks), kReduceThreads, 0, stream>>>(absmax, nblocks,
                                                                                 records);
  KBITD_RETURN_IF_ERROR(LaunchStatus("DoubleQuantizeAbsmax partial sums"));
  FinishOffsetKernel<<<1, kReduceThreads, 0, stream>>>(absmax, nblocks, records,
                                                       static_cast<int>(chunks), offset);
  return LaunchStatus("DoubleQuantizeAbsmax offset");
}

}  // namespace

absl::Status DoubleQuantizeAbsmax(const float* absmax, int64_t nblocks, const float* nested_code,
                                  uint8_t* codes, float* nested_absmax, float* offset,
                                  void* stream) {
  if (nblocks <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("double quantization needs at least one absmax block, got ", nblocks));
  }
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, nblocks, "absmax input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(nested_code, 1, "nested code"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(codes, nblocks, "nested codes output"));
  KBITD_RETURN_IF_ERROR(
      quant::internal::CheckPointer(nested_absmax, nblocks, "nested absmax output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(offset, 1, "nested offset output"));
  const cudaStream_t s = AsCudaStream(stream);
  KBITD_RETURN_IF_ERROR(ComputeOffset(absmax, nblocks, codes, offset, s));
  internal::QuantizeParams params{};
  params.input = absmax;
  params.n = nblocks;
  params.log2_blocksize = internal::Log2Blocksize(kNestedBlocksize);
  params.codes = codes;
  params.absmax = nested_absmax;
  params.table = nested_code;
  params.subtract = offset;
  params.vectorized = internal::IsAligned(absmax, 16) && internal::IsAligned(codes, 16);
  return internal::LaunchQuantize<F32, internal::Dynamic8Codec>(params, s,
                                                                "DoubleQuantizeAbsmax codes");
}

absl::Status ReconstructAbsmax(const uint8_t* codes, const float* nested_absmax,
                               const float* nested_code, float offset, int64_t nblocks,
                               float* absmax, void* stream) {
  KBITD_RETURN_IF_ERROR(quant::internal::CheckCount(nblocks, "nested absmax count"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(codes, nblocks, "nested codes"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(nested_absmax, nblocks, "nested absmax"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(nested_code, 1, "nested code"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, nblocks, "absmax output"));
  internal::DequantizeParams params{};
  params.codes = codes;
  params.absmax = nested_absmax;
  params.n = nblocks;
  params.log2_blocksize = internal::Log2Blocksize(kNestedBlocksize);
  params.output = absmax;
  params.table = nested_code;
  params.offset = offset;
  params.add_offset = true;
  params.vectorized = internal::IsAligned(absmax, 16) && internal::IsAligned(codes, 16);
  return internal::LaunchDequantize<F32, 8>(params, AsCudaStream(stream), "ReconstructAbsmax");
}

}  // namespace kbitd::quant::cuda
