// The CUDA devices of this machine as DeviceSet accelerators (runtime/accelerator.h): each with
// its arena allocator, the default budget transformers uses for one GPU (90 % of the memory free
// at start) and its CudaBackend. No GPU or no driver: none, not an error.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "runtime/accelerator.h"

namespace kbitd::runtime::cuda {

absl::StatusOr<std::vector<AcceleratorDevice>> DiscoverCudaDevices();

}  // namespace kbitd::runtime::cuda
