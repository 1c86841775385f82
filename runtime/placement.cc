#include "runtime/placement.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

// One device of a plan being made, in accelerate's order: GPUs by index, then the host.
struct Slot {
  Device device;
  int64_t cap = kUnlimitedBytes;  // its budget; "balanced" lowers it on all GPUs but the last
  int64_t used = 0;
  int64_t reserved = 0;  // kept free on the main GPU to run offloaded modules
};

bool IsAutoMode(const std::string& device_map) {
  return device_map.empty() || device_map == "auto" || device_map == "balanced" ||
         device_map == "balanced_low_0" || device_map == "sequential";
}

// `module` is `prefix` or inside it, at module-name component boundaries ("" contains all).
bool Contains(std::string_view prefix, std::string_view module) {
  return prefix.empty() || module == prefix ||
         (module.size() > prefix.size() && module.substr(0, prefix.size()) == prefix &&
          module[prefix.size()] == '.');
}

absl::Status NoCudaDevice(const Device& device, const std::string& what,
                          const std::vector<Slot>& slots) {
  std::vector<std::string> have;
  for (const Slot& s : slots) {
    if (!s.device.is_cpu()) have.push_back(s.device.ToString());
  }
  return absl::FailedPreconditionError(
      absl::StrCat("device_map ", what, " places modules on ", device.ToString(), ", but there is ",
                   have.empty() ? "no CUDA device (models run on the CPU only here)"
                                : absl::StrCat("no CUDA device ", device.ToString(), " (there are ",
                                               absl::StrJoin(have, ", "), ")")));
}

absl::StatusOr<Device> ParseMapDevice(const std::string& text, const std::string& what,
                                      const std::vector<Slot>& slots) {
  KBITD_ASSIGN_OR_RETURN(Device device, ParseDevice(text));
  for (const Slot& s : slots) {
    if (s.device == device) return device;
  }
  return NoCudaDevice(device, what, slots);
}

absl::Status ParseMaxMemory(const PlacementOptions& options, std::map<std::string, int64_t>* out) {
  for (const auto& [key, bytes] : options.max_memory) {
    if (bytes < 0) {
      return absl::InvalidArgumentError(absl::StrCat("max_memory[\"", key, "\"] must be >= 0"));
    }
    KBITD_ASSIGN_OR_RETURN(Device device, ParseDevice(key));
    (*out)[device.ToString()] = bytes;
  }
  return absl::OkStatus();
}

// The devices the caller lists, in accelerate's order, with max_memory applied.
absl::StatusOr<std::vector<Slot>> MakeSlots(const std::vector<DeviceBudget>& devices,
                                            const std::map<std::string, int64_t>& max_memory) {
  std::vector<Slot> slots;
  for (const DeviceBudget& d : devices) {
    if (d.bytes < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("the budget of ", d.device.ToString(), " must be >= 0"));
    }
    for (const Slot& s : slots) {
      if (s.device == d.device) {
        return absl::InvalidArgumentError(
            absl::StrCat("device ", d.device.ToString(), " is listed twice"));
      }
    }
    int64_t cap = d.bytes;
    if (auto it = max_memory.find(d.device.ToString()); it != max_memory.end()) {
      cap = std::min(cap, it->second);
    }
    slots.push_back({d.device, cap});
  }
  std::sort(slots.begin(), slots.end(), [](const Slot& a, const Slot& b) {
    if (a.device.is_cpu() != b.device.is_cpu()) return b.device.is_cpu();
    return a.device.index < b.device.index;
  });
  if (slots.empty() || !slots.back().device.is_cpu()) {
    return absl::InvalidArgumentError("the devices of a placement must include the host (cpu)");
  }
  return slots;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  return a > kUnlimitedBytes - b ? kUnlimitedBytes : a + b;
}

std::string DescribeLeft(const std::vector<Slot>& slots) {
  std::vector<std::string> parts;
  for (const Slot& s : slots) {
    const int64_t left = s.cap - s.used;
    std::string part =
        absl::StrCat(s.device.ToString(), " has ", left, " of ", s.cap, " bytes left");
    if (s.reserved > 0) {
      absl::StrAppend(&part, " (", std::min(s.reserved, left),
                      " of them kept free to run offloaded modules)");
    }
    parts.push_back(std::move(part));
  }
  return absl::StrJoin(parts, ", ");
}

// Modules that must share a device: each tied module joins the module it is tied to.
std::vector<int> GroupRoots(const ModuleSizes& sizes) {
  std::vector<int> root(sizes.modules.size());
  for (size_t i = 0; i < sizes.modules.size(); ++i) {
    root[i] = static_cast<int>(i);
    const std::string& target = sizes.modules[i].tied_to;
    if (target.empty()) continue;
    for (size_t j = 0; j < sizes.modules.size(); ++j) {
      if (sizes.modules[j].name == target) root[i] = static_cast<int>(j);
    }
  }
  return root;
}

// The first GPU with room: where accelerate's automatic modes start filling and where offloaded
// modules run; -1 without one.
int MainGpu(const std::vector<Slot>& slots) {
  for (size_t s = 0; s < slots.size(); ++s) {
    if (!slots[s].device.is_cpu() && slots[s].cap > 0) return static_cast<int>(s);
  }
  return -1;
}

// Fills the slots in order, never going back, as accelerate's infer_auto_device_map does over
// the no-split units (accelerate src/accelerate/utils/modeling.py). With `reserve`, the main GPU
// (the first with room, where offloaded modules run) keeps free the size of the largest module not
// yet placed, as accelerate keeps it on its "main devices". The host keeps nothing free: accelerate
// does that for modules offloaded to disk, which kbitd does not do. Returns each module's slot.
absl::StatusOr<std::vector<int>> FillInOrder(const ModuleSizes& sizes, std::vector<Slot>& slots,
                                             bool reserve) {
  const int main_gpu = MainGpu(slots);
  const std::vector<int> root = GroupRoots(sizes);
  const size_t n = sizes.modules.size();
  std::vector<int> slot_of(n, -1);
  size_t current = 0;
  for (size_t i = 0; i < n; ++i) {
    if (slot_of[i] >= 0) continue;
    const int group = root[i];
    int64_t bytes = 0;
    for (size_t j = 0; j < n; ++j) {
      if (root[j] == group) bytes += sizes.modules[j].bytes;
    }
    int64_t largest_rest = 0;
    for (size_t j = i + 1; j < n; ++j) {
      if (slot_of[j] < 0 && root[j] != group) {
        largest_rest = std::max(largest_rest, sizes.modules[j].bytes);
      }
    }
    for (; current < slots.size(); ++current) {
      Slot& slot = slots[current];
      const int64_t keep = reserve && static_cast<int>(current) == main_gpu ? largest_rest : 0;
      if (bytes + keep <= slot.cap - slot.used) {
        slot.used += bytes;
        for (size_t j = 0; j < n; ++j) {
          if (root[j] == group) slot_of[j] = static_cast<int>(current);
        }
        break;
      }
      slot.reserved = keep;  // moving on: what was kept stays free
    }
    if (current == slots.size()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          sizes.modules[i].name, " (", bytes, " bytes) fits on no device: ", DescribeLeft(slots),
          " (devices are filled in order, GPUs first, and never revisited, as accelerate does)"));
    }
  }
  return slot_of;
}

// get_balanced_memory (accelerate src/accelerate/utils/modeling.py; bnb-spec §7.3): every GPU but
// the last is capped at model / n_gpus + 1.25 x max(decoder layer, mean leaf module), so the model
// spreads over all of them; the last keeps its whole budget in case that buffer falls short.
// balanced_low_0 divides by n_gpus - 1 and gives GPU 0 only what the others cannot hold.
// accelerate takes the first decoder layer's size for the buffer; kbitd takes the largest
// (equal in every model it runs, and safe when a skip list leaves one layer dense).
void BalanceGpus(const ModuleSizes& sizes, bool low_zero, std::vector<Slot>& slots) {
  std::vector<Slot*> gpus;
  for (Slot& s : slots) {
    if (!s.device.is_cpu() && s.cap > 0) gpus.push_back(&s);
  }
  const int64_t n = static_cast<int64_t>(gpus.size());
  if (n < 2) return;  // one GPU: nothing to balance (accelerate drops low_0 too)
  const int64_t total = sizes.total_bytes();
  const int64_t mean_leaf = total / std::max(sizes.leaf_modules(), 1);
  const int64_t buffer = std::max(sizes.largest_decoder_layer_bytes(), mean_leaf) * 5 / 4;
  const int64_t per_gpu = total / (low_zero ? n - 1 : n) + buffer;
  for (int64_t i = low_zero ? 1 : 0; i + 1 < n; ++i) {
    gpus[i]->cap = std::min(per_gpu, gpus[i]->cap);
  }
  if (low_zero) {
    int64_t others = 0;
    for (int64_t i = 1; i < n; ++i) others = SaturatingAdd(others, gpus[i]->cap);
    gpus[0]->cap = std::min(std::max<int64_t>(0, total - others), gpus[0]->cap);
  }
}

std::vector<PlacementEntry> Entries(const ModuleSizes& sizes, const std::vector<Slot>& slots,
                                    const std::vector<int>& slot_of) {
  bool any_gpu = false;
  for (int s : slot_of) any_gpu = any_gpu || !slots[s].device.is_cpu();
  std::vector<PlacementEntry> entries;
  for (size_t i = 0; i < sizes.modules.size(); ++i) {
    const Device& device = slots[slot_of[i]].device;
    entries.push_back(
        {sizes.modules[i].name, device, sizes.modules[i].bytes, any_gpu && device.is_cpu()});
  }
  return entries;
}

bool Offloads(const std::vector<PlacementEntry>& entries) {
  return std::any_of(entries.begin(), entries.end(),
                     [](const PlacementEntry& e) { return e.offloaded; });
}

absl::Status PlaceAuto(const std::string& mode, const ModuleSizes& sizes, std::vector<Slot> slots,
                       PlacementPlan* plan) {
  if (mode != "sequential") BalanceGpus(sizes, mode == "balanced_low_0", slots);
  // Without offloading nothing needs room on the main GPU, so try without keeping any first; only
  // a plan that offloads is redone keeping room, as accelerate always does.
  std::vector<Slot> first = slots;
  KBITD_ASSIGN_OR_RETURN(std::vector<int> slot_of, FillInOrder(sizes, first, false));
  plan->entries = Entries(sizes, first, slot_of);
  if (!Offloads(plan->entries)) return absl::OkStatus();
  KBITD_ASSIGN_OR_RETURN(slot_of, FillInOrder(sizes, slots, true));
  plan->entries = Entries(sizes, slots, slot_of);
  // Keeping room can push every module off the GPUs; then nothing is offloaded either.
  if (Offloads(plan->entries)) plan->offload_device = slots[MainGpu(slots)].device;
  return absl::OkStatus();
}

// Places each module where an explicit map says, checking the map covers the model, splits no
// module and keeps tied modules together, then that every device's budget holds.
absl::Status PlaceExplicit(const std::map<std::string, std::string>& map, const ModuleSizes& sizes,
                           std::vector<Slot> slots, PlacementPlan* plan) {
  std::map<std::string, Device> devices;
  for (const auto& [prefix, text] : map) {
    KBITD_ASSIGN_OR_RETURN(devices[prefix],
                           ParseMapDevice(text, absl::StrCat("entry \"", prefix, "\""), slots));
  }
  std::vector<int> slot_of;
  for (const ModuleSize& m : sizes.modules) {
    const std::string* cover = nullptr;
    for (const auto& [prefix, device] : devices) {
      if (Contains(prefix, m.name) && (cover == nullptr || prefix.size() >= cover->size())) {
        cover = &prefix;
      }
    }
    if (cover == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("device_map places no device for module ", m.name,
                       " (give it, or a prefix of it such as \"model\" or \"\", a device)"));
    }
    const Device& device = devices.at(*cover);
    for (const auto& [prefix, inner] : devices) {
      if (prefix != m.name && Contains(m.name, prefix) && !(inner == device)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "device_map entry \"", prefix, "\" puts part of ", m.name, " on ", inner.ToString(),
            " and entry \"", *cover, "\" the rest on ", device.ToString(),
            ": kbitd places whole modules (a decoder layer is never split)"));
      }
    }
    for (size_t s = 0; s < slots.size(); ++s) {
      if (slots[s].device == device) slot_of.push_back(static_cast<int>(s));
    }
  }
  const std::vector<int> root = GroupRoots(sizes);
  for (size_t i = 0; i < sizes.modules.size(); ++i) {
    if (slot_of[i] != slot_of[root[i]]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "device_map puts ", sizes.modules[i].name, " on ", slots[slot_of[i]].device.ToString(),
          " and ", sizes.modules[root[i]].name, " on ", slots[slot_of[root[i]]].device.ToString(),
          ", but they share weights (tie_word_embeddings) and must be on one device"));
    }
  }
  for (size_t i = 0; i < sizes.modules.size(); ++i) {
    Slot& slot = slots[slot_of[i]];
    const int64_t bytes = sizes.modules[i].bytes;
    if (bytes > slot.cap - slot.used) {
      return absl::ResourceExhaustedError(
          absl::StrCat("device_map puts ", sizes.modules[i].name, " (", bytes, " bytes) on ",
                       slot.device.ToString(), ", which has ", slot.cap - slot.used, " of ",
                       slot.cap, " bytes left"));
    }
    slot.used += bytes;
  }
  plan->entries = Entries(sizes, slots, slot_of);
  if (Offloads(plan->entries)) {
    plan->offload_device = slots[*std::min_element(slot_of.begin(), slot_of.end())].device;
  }
  return absl::OkStatus();
}

}  // namespace

Device PlacementPlan::DeviceFor(std::string_view module) const {
  for (const PlacementEntry& e : entries) {
    if (!e.module.empty() && Contains(e.module, module)) return e.device;
  }
  return Device::Cpu();
}

int64_t PlacementPlan::BytesOn(const Device& device) const {
  int64_t bytes = 0;
  for (const PlacementEntry& e : entries) {
    if (e.device == device) bytes += e.bytes;
  }
  return bytes;
}

int64_t PlacementPlan::MaxBytes(const Device& device) const {
  auto it = max_memory.find(device.ToString());
  return it == max_memory.end() ? 0 : it->second;
}

absl::StatusOr<int64_t> ParseMemorySize(const std::string& text) {
  // accelerate.utils.convert_file_size_to_int: GiB/MiB/KiB are powers of 2, GB/MB/KB of 10.
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  std::string number = text.substr(0, i);
  std::string unit = text.substr(i);
  char* end = nullptr;
  double value = number.empty() ? -1 : std::strtod(number.c_str(), &end);
  double scale = 0;
  if (unit.empty() || unit == "B")
    scale = 1;
  else if (unit == "KB")
    scale = 1e3;
  else if (unit == "MB")
    scale = 1e6;
  else if (unit == "GB")
    scale = 1e9;
  else if (unit == "TB")
    scale = 1e12;
  else if (unit == "KiB")
    scale = 1024.0;
  else if (unit == "MiB")
    scale = 1024.0 * 1024;
  else if (unit == "GiB")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "TiB")
    scale = 1024.0 * 1024 * 1024 * 1024;
  if (value < 0 || scale == 0 || end == nullptr || *end != '\0' || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory size \"", text, "\" is not a byte count or a size like \"20GiB\" / \"512MB\""));
  }
  return static_cast<int64_t>(value * scale);
}

absl::StatusOr<PlacementPlan> MakePlacementPlan(const PlacementOptions& options,
                                                const ModuleSizes& sizes,
                                                const std::vector<DeviceBudget>& devices) {
  PlacementPlan plan;
  KBITD_RETURN_IF_ERROR(ParseMaxMemory(options, &plan.max_memory));
  KBITD_ASSIGN_OR_RETURN(std::vector<Slot> slots, MakeSlots(devices, plan.max_memory));
  if (!options.explicit_map.empty()) {
    KBITD_RETURN_IF_ERROR(PlaceExplicit(options.explicit_map, sizes, slots, &plan));
  } else if (IsAutoMode(options.device_map)) {
    KBITD_RETURN_IF_ERROR(PlaceAuto(options.device_map, sizes, slots, &plan));
  } else {
    if (!ParseDevice(options.device_map).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "device_map \"", options.device_map,
          "\" is not \"auto\", \"balanced\", \"balanced_low_0\", \"sequential\", \"cpu\", "
          "\"cuda:N\" or a GPU index"));
    }
    KBITD_ASSIGN_OR_RETURN(
        Device device,
        ParseMapDevice(options.device_map, absl::StrCat("\"", options.device_map, "\""), slots));
    std::map<std::string, std::string> everything = {{"", device.ToString()}};
    KBITD_RETURN_IF_ERROR(PlaceExplicit(everything, sizes, slots, &plan));
  }
  return plan;
}

absl::StatusOr<PlacementPlan> MakePlacementPlan(const PlacementOptions& options,
                                                bool have_cuda_backend) {
  PlacementPlan plan;
  KBITD_RETURN_IF_ERROR(ParseMaxMemory(options, &plan.max_memory));
  // Only the device strings can be checked without sizes: against the host, plus any GPU index
  // when a CUDA backend exists (how many there are is not known here).
  auto check = [&](const std::string& text, const std::string& what) -> absl::Status {
    KBITD_ASSIGN_OR_RETURN(Device device, ParseDevice(text));
    if (!device.is_cpu() && !have_cuda_backend) return NoCudaDevice(device, what, {});
    return absl::OkStatus();
  };
  if (!options.explicit_map.empty()) {
    for (const auto& [prefix, text] : options.explicit_map) {
      KBITD_RETURN_IF_ERROR(check(text, absl::StrCat("entry \"", prefix, "\"")));
    }
  } else if (!IsAutoMode(options.device_map)) {
    KBITD_RETURN_IF_ERROR(check(options.device_map, absl::StrCat("\"", options.device_map, "\"")));
  }
  return plan;
}

std::string FormatPlacementPlan(const PlacementPlan& plan) {
  std::vector<Device> devices;
  for (const PlacementEntry& e : plan.entries) {
    if (std::find(devices.begin(), devices.end(), e.device) == devices.end()) {
      devices.push_back(e.device);
    }
  }
  std::sort(devices.begin(), devices.end(), [](const Device& a, const Device& b) {
    if (a.is_cpu() != b.is_cpu()) return b.is_cpu();
    return a.index < b.index;
  });
  std::vector<std::string> lines;
  for (const Device& device : devices) {
    std::vector<std::string> names;
    // A run of consecutive decoder layers on this device, as [first, last].
    int64_t first = -1, last = -1;
    auto flush = [&] {
      if (first < 0) return;
      names.push_back(first == last ? absl::StrCat("model.layers.", first)
                                    : absl::StrCat("model.layers.", first, "-", last));
      first = last = -1;
    };
    int64_t bytes = 0;
    bool offloaded = false;
    for (const PlacementEntry& e : plan.entries) {
      if (!(e.device == device)) continue;
      bytes += e.bytes;
      offloaded = offloaded || e.offloaded;
      int64_t layer = -1;
      if (std::string_view name = e.module; name.rfind("model.layers.", 0) == 0) {
        if (!absl::SimpleAtoi(std::string(name.substr(13)), &layer)) layer = -1;
      }
      if (layer >= 0 && first >= 0 && layer == last + 1) {
        last = layer;
        continue;
      }
      flush();
      if (layer >= 0) {
        first = last = layer;
      } else {
        names.push_back(e.module);
      }
    }
    flush();
    std::string offload;
    if (offloaded) {
      offload = absl::StrCat(", offloaded to ", plan.offload_device.value_or(device).ToString());
    }
    lines.push_back(absl::StrFormat("%s: %s (%.2f MiB%s)", device.ToString(),
                                    absl::StrJoin(names, ", "), bytes / (1024.0 * 1024.0),
                                    offload));
  }
  return absl::StrJoin(lines, "\n");
}

}  // namespace kbitd::runtime
