// Which device each module of a model goes to, from transformers/accelerate's device_map and
// max_memory (bnb-spec §7.3). The CPU backend is the only one so far: plans place everything on
// the host, and a map that names a GPU is refused with a clear error until the CUDA backend lands.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/device.h"

namespace kbitd::runtime {

struct PlacementOptions {
  // "auto", "cpu", "cuda:0", ... or an explicit module -> device map in `explicit_map`.
  std::string device_map = "cpu";
  std::map<std::string, std::string> explicit_map;
  // Per-device byte limits, keys as accelerate spells them ("cpu", "0", "cuda:0").
  std::map<std::string, int64_t> max_memory;
};

struct PlacementPlan {
  Device default_device;
  std::map<std::string, Device> module_devices;  // overrides by module-name prefix
  std::map<std::string, int64_t> max_memory;     // device string -> byte limit (0 = none)

  Device DeviceFor(const std::string& module_name) const;
  int64_t MaxBytes(const Device& device) const;
};

// Parses a memory size: an integer byte count or "20GiB", "512MB", "1.5GB" (accelerate rules:
// GB = 10^9, GiB = 2^30).
absl::StatusOr<int64_t> ParseMemorySize(const std::string& text);

absl::StatusOr<PlacementPlan> MakePlacementPlan(const PlacementOptions& options,
                                                bool have_cuda_backend);

}  // namespace kbitd::runtime
