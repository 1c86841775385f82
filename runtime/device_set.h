// The devices this process computes on, each with its one memory pool and one backend, created at
// start and shared by every model on the device: a device's max_memory therefore holds across
// models, and its pool's totals are the device's totals (what kbitd_device_memory_bytes reports).
// The host CPU is always a device; accelerators (runtime/cuda) join through Options.accelerators.
// Thread-safety: the set is immutable after Create. Pools are thread-safe; a backend is driven by
// one thread at a time (the device's worker in the daemon).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/accelerator.h"
#include "runtime/backend.h"
#include "runtime/device.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime {

class DeviceSet {
 public:
  struct Options {
    int32_t cpu_threads = 0;  // threads of the CPU backend's pool; 0 = hardware concurrency
    // Device-wide byte limits ("cpu", "0", "cuda:0" -> bytes; absent or 0 = none), for every model
    // on the device together. A model's own max_memory (LoadOptions) caps it within this.
    std::map<std::string, int64_t> max_memory;
    MemoryObserver* observer = nullptr;  // not owned; must outlive the set
    // Finds the accelerators to add after the host (e.g. runtime/cuda's DiscoverCudaDevices);
    // unset = the host only.
    AcceleratorDiscovery accelerators;
  };
  // INVALID_ARGUMENT for a max_memory key that is not a device or names one that is not here.
  static absl::StatusOr<std::unique_ptr<DeviceSet>> Create(const Options& options);

  // The devices, the host first.
  std::vector<Device> devices() const;
  bool Contains(const Device& device) const;
  // NOT_FOUND naming the device and the devices there are.
  absl::StatusOr<std::shared_ptr<MemoryPool>> Pool(const Device& device) const;
  absl::StatusOr<Backend*> BackendFor(const Device& device) const;
  const std::shared_ptr<MemoryPool>& host_pool() const { return entries_.front().pool; }

 private:
  struct Entry {
    Device device;
    std::shared_ptr<MemoryPool> pool;
    std::unique_ptr<Backend> backend;
  };
  DeviceSet() = default;
  const Entry* Find(const Device& device) const;
  absl::Status NotHere(const Device& device) const;

  std::vector<Entry> entries_;
};

}  // namespace kbitd::runtime
