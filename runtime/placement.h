// Which device each module of a model goes to, from transformers' from_pretrained device_map and
// max_memory, planned the way accelerate plans them (infer_auto_device_map, get_balanced_memory;
// bnb-spec §7.3) over the module sizes of runtime/module_sizes.h. Pure: the caller says which
// devices exist and how many bytes each may take, so the plan is the same on every machine given
// the same inputs, and tests need no GPU.
//
// device_map:
//   "cpu", "cuda", "cuda:N", "N"  every module on that device;
//   "auto" (= "balanced"), "balanced", "balanced_low_0", "sequential", ""  (= "auto")
//       GPUs in index order, then the host, never going back; "balanced" caps every GPU but the
//       last so that the model spreads evenly, "balanced_low_0" keeps GPU 0 as empty as the
//       others allow. When modules end up offloaded, the plan is redone keeping room on the first
//       GPU for the largest module still to place (accelerate keeps that room even when nothing is
//       offloaded; kbitd does not, so a model that fits the GPUs exactly stays on them). Budgets
//       are taken as given: transformers' 10% bitsandbytes margin is for quantizing on the GPU,
//       and kbitd quantizes on the host;
//   explicit_map (when not empty): module-name prefix -> device, the longest prefix winning; every
//       module must be covered, an entry inside a module must agree with it (modules are never
//       split) and tied modules must share a device. Followed as given, budgets checked.
// max_memory (keys "cpu", "N", "cuda:N"): a device's budget is the smaller of it and the caller's
// DeviceBudget; 0 keeps the device empty (accelerate's meaning); a key for a device that does not
// exist is ignored, as accelerate only warns about it.
// A module on the host in a plan that also uses a GPU is "offloaded": its weights live on the host
// and it runs on the plan's offload_device, where the automatic modes keep room for the largest of
// them. On a machine without GPUs nothing is offloaded, and a map that asks for a GPU is
// FAILED_PRECONDITION ("no CUDA device").
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/device.h"
#include "runtime/module_sizes.h"

namespace kbitd::runtime {

struct PlacementOptions {
  // "auto", "cpu", "cuda:0", ... or an explicit module -> device map in `explicit_map`.
  std::string device_map = "cpu";
  std::map<std::string, std::string> explicit_map;
  // Per-device byte limits, keys as accelerate spells them ("cpu", "0", "cuda:0").
  std::map<std::string, int64_t> max_memory;
};

inline constexpr int64_t kUnlimitedBytes = std::numeric_limits<int64_t>::max();

// A device that exists and the most weight bytes a plan may put on it (its free memory less what
// the caller keeps for KV cache and workspace). The host must be one of them.
struct DeviceBudget {
  Device device;
  int64_t bytes = kUnlimitedBytes;
};

struct PlacementEntry {
  std::string module;  // a ModuleSize name
  Device device;
  int64_t bytes = 0;
  bool offloaded = false;  // on the host, run on the plan's offload_device
};

struct PlacementPlan {
  std::vector<PlacementEntry> entries;  // one per module, in forward order
  // Where offloaded modules run (accelerate's main device), set when any is offloaded: in the
  // automatic modes the first GPU with a budget, which keeps room for the largest of them even if
  // it holds no module itself; with a map, the lowest GPU the map uses.
  std::optional<Device> offload_device;
  // Device string -> the max_memory limit given for it (absent: none given).
  std::map<std::string, int64_t> max_memory;

  // The device of the entry that is `module` or contains it ("model.layers.3.mlp.up_proj" ->
  // the device of "model.layers.3"); the host when no entry does.
  Device DeviceFor(std::string_view module) const;
  // Weight bytes the plan puts on `device` (offloaded modules count on the host).
  int64_t BytesOn(const Device& device) const;
  // The max_memory limit given for `device`, 0 when none was given (MemoryPool's "no limit").
  int64_t MaxBytes(const Device& device) const;
};

// Parses a memory size: an integer byte count or "20GiB", "512MB", "1.5GB" (accelerate rules:
// GB = 10^9, GiB = 2^30).
absl::StatusOr<int64_t> ParseMemorySize(const std::string& text);

// Places every module of `sizes` on one of `devices` (see the top of this file). Errors:
// INVALID_ARGUMENT for a bad device string, max_memory entry or DeviceBudget list, a module an
// explicit map leaves uncovered (naming the first), an entry that would split a decoder layer or
// part tied weights; FAILED_PRECONDITION for a GPU that does not exist; RESOURCE_EXHAUSTED naming
// the first module that fits nowhere, its bytes and what each device had left.
absl::StatusOr<PlacementPlan> MakePlacementPlan(const PlacementOptions& options,
                                                const ModuleSizes& sizes,
                                                const std::vector<DeviceBudget>& devices);

// Checks `options` and records max_memory without placing anything (no entries: DeviceFor answers
// the host). For runtime/loader before it computes ModuleSizes and calls the overload above;
// without a CUDA device (have_cuda_backend = false) a map that names a GPU is FAILED_PRECONDITION.
absl::StatusOr<PlacementPlan> MakePlacementPlan(const PlacementOptions& options,
                                                bool have_cuda_backend);

// One line per device that holds modules, GPUs first, e.g.
//   "cuda:0: model.embed_tokens, model.layers.0-15, lm_head (1234.50 MiB)"
//   "cpu: model.layers.16-31, model.norm (567.00 MiB, offloaded to cuda:0)"
// for the loader's log and ModelInfo.
std::string FormatPlacementPlan(const PlacementPlan& plan);

}  // namespace kbitd::runtime
