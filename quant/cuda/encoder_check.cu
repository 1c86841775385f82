#include "common/status_macros.h"
#include "quant/codebooks.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/device.h"
#include "quant/cuda/encode_select.cuh"
#include "quant/cuda/encode_tree.cuh"
#include "quant/cuda/encoder_check.h"
#include "quant/encode.h"

namespace kbitd::quant::cuda {
namespace {

using internal::Lut16;

inline constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    CompareEncodersKernel(Lut16 nf4_tree, Lut16 fp4_tree, const float* code256,
                          unsigned long long* mismatches) {
  __shared__ float nf4[16], fp4[16], code[256];
  __shared__ internal::MapRankTable rank_table;
  if (threadIdx.x < 16) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      if (i == static_cast<int>(threadIdx.x)) {
        nf4[i] = nf4_tree.v[i];
        fp4[i] = fp4_tree.v[i];
      }
    }
  }
  code[threadIdx.x] = code256[threadIdx.x];
  internal::LoadMapRanks(code256, &rank_table);
  __syncthreads();
  unsigned long long counts[5] = {0, 0, 0, 0, 0};
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t bits = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; bits <= 0xFFFFFFFFull;
       bits += stride) {
    const float x = __uint_as_float(static_cast<uint32_t>(bits));
    const uint8_t ref_nf4 = EncodeNf4(x), ref_fp4 = EncodeFp4(x);
    counts[0] += internal::EncodeNf4Tree(nf4, x) != ref_nf4;
    counts[1] += internal::EncodeFp4Tree(fp4, x) != ref_fp4;
    counts[2] += internal::EncodeDynamic8bitRank(rank_table, x) != EncodeDynamic8bit(code, x);
    counts[3] += internal::EncodeNf4Select(x) != ref_nf4;
    counts[4] += internal::EncodeFp4Select(x) != ref_fp4;
  }
#pragma unroll
  for (int i = 0; i < 5; ++i) {
    if (counts[i] != 0) atomicAdd(&mismatches[i], counts[i]);
  }
}

}  // namespace

absl::StatusOr<EncoderMismatches> CountEncoderMismatches(const float* code256, void* stream) {
  KBITD_ASSIGN_OR_RETURN(DeviceBuffer counts, DeviceBuffer::Allocate(5 * sizeof(uint64_t)));
  KBITD_RETURN_IF_ERROR(counts.Fill(0));
  KBITD_ASSIGN_OR_RETURN(const int sms, MultiprocessorCount());
  CompareEncodersKernel<<<sms * 8, kThreads, 0, AsCudaStream(stream)>>>(
      internal::EytzingerTree(kNf4ThresholdBits.data(), 4),
      internal::EytzingerTree(kFp4ThresholdBits.data(), 3), code256,
      counts.as<unsigned long long>());
  KBITD_RETURN_IF_ERROR(LaunchStatus("CompareEncodersKernel"));
  KBITD_RETURN_IF_ERROR(SynchronizeStream(stream));
  uint64_t host[5];
  KBITD_RETURN_IF_ERROR(counts.CopyToHost(host, sizeof(host)));
  return EncoderMismatches{host[0], host[1], host[2], host[3], host[4]};
}

}  // namespace kbitd::quant::cuda
