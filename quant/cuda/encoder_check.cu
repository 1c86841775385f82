#include "quant/cuda/encoder_check.h"

#include "common/status_macros.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/device.h"
#include "quant/cuda/encode_select.cuh"
#include "quant/encode.h"

namespace kbitd::quant::cuda {
namespace {

__global__ void CompareEncodersKernel(unsigned long long* mismatches) {
  unsigned long long nf4 = 0, fp4 = 0;
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t bits = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; bits <= 0xFFFFFFFFull;
       bits += stride) {
    const float x = __uint_as_float(static_cast<uint32_t>(bits));
    nf4 += internal::EncodeNf4Select(x) != EncodeNf4(x);
    fp4 += internal::EncodeFp4Select(x) != EncodeFp4(x);
  }
  if (nf4 != 0) atomicAdd(&mismatches[0], nf4);
  if (fp4 != 0) atomicAdd(&mismatches[1], fp4);
}

}  // namespace

absl::StatusOr<EncoderMismatches> CountEncoderMismatches(void* stream) {
  KBITD_ASSIGN_OR_RETURN(DeviceBuffer counts, DeviceBuffer::Allocate(2 * sizeof(uint64_t)));
  KBITD_RETURN_IF_ERROR(counts.Fill(0));
  KBITD_ASSIGN_OR_RETURN(const int sms, MultiprocessorCount());
  CompareEncodersKernel<<<sms * 8, 256, 0, AsCudaStream(stream)>>>(
      counts.as<unsigned long long>());
  KBITD_RETURN_IF_ERROR(LaunchStatus("CompareEncodersKernel"));
  KBITD_RETURN_IF_ERROR(SynchronizeStream(stream));
  uint64_t host[2];
  KBITD_RETURN_IF_ERROR(counts.CopyToHost(host, sizeof(host)));
  return EncoderMismatches{host[0], host[1]};
}

}  // namespace kbitd::quant::cuda
