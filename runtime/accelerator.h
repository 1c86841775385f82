// The seam through which devices beyond the host join a DeviceSet. runtime/ knows no accelerator
// API: a backend folder (runtime/cuda) provides a discovery function, and the programs that are
// built with it (the daemon, kbitq, GPU tests and benchmarks) hand it to DeviceSet::Create. A
// build or a machine without an accelerator simply has none to discover.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/device.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime {

struct AcceleratorDevice {
  Device device;
  // Raw memory of the device for its MemoryPool.
  std::unique_ptr<DeviceAllocator> allocator;
  // The pool's byte limit when max_memory names no limit for this device (transformers' default:
  // 90 % of the GPU's free memory at start); 0 = none.
  int64_t default_max_bytes = 0;
  // Makes the device's backend once its pool exists: a backend takes its scratch space (e.g. a
  // dequantized weight tile) from the pool, where it is counted as workspace.
  std::function<absl::StatusOr<std::unique_ptr<Backend>>(std::shared_ptr<MemoryPool> pool)>
      make_backend;
};

// Finds the devices present (none is not an error).
using AcceleratorDiscovery = std::function<absl::StatusOr<std::vector<AcceleratorDevice>>()>;

}  // namespace kbitd::runtime
