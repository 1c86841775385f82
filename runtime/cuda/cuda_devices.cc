#include "runtime/cuda/cuda_devices.h"

#include <cuda_runtime.h>

#include "common/status_macros.h"
#include "quant/cuda/cuda_check.h"
#include "runtime/cuda/cuda_allocator.h"
#include "runtime/cuda/cuda_backend.h"

namespace kbitd::runtime::cuda {
namespace {

// Reserved from the GPU at a time: few enough cudaMalloc calls while loading, small enough that a
// model of a few hundred MB does not hold much more than it uses.
constexpr int64_t kArenaChunkBytes = int64_t{256} << 20;

}  // namespace

absl::StatusOr<std::vector<AcceleratorDevice>> DiscoverCudaDevices() {
  std::vector<AcceleratorDevice> devices;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no GPU: a CPU-only machine
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    KBITD_RETURN_IF_ERROR(quant::cuda::CudaStatus(cudaSetDevice(i), "cudaSetDevice"));
    size_t free_bytes = 0, total_bytes = 0;
    KBITD_RETURN_IF_ERROR(
        quant::cuda::CudaStatus(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
    AcceleratorDevice device;
    device.device = Device::Cuda(i);
    device.allocator = NewCudaArenaAllocator(i, kArenaChunkBytes);
    // accelerate's get_max_memory for a lone GPU: 90 % of what is free.
    device.default_max_bytes = static_cast<int64_t>(free_bytes / 10 * 9);
    device.make_backend = [i](std::shared_ptr<MemoryPool> pool) {
      return NewCudaBackend(i, std::move(pool));
    };
    devices.push_back(std::move(device));
  }
  return devices;
}

}  // namespace kbitd::runtime::cuda
