#include "runtime/placement.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {

Device PlacementPlan::DeviceFor(const std::string& module_name) const {
  // Longest matching prefix wins, matching at module-name component boundaries.
  const Device* best = &default_device;
  size_t best_len = 0;
  for (const auto& [prefix, device] : module_devices) {
    bool match =
        prefix.empty() || module_name == prefix || (module_name.rfind(prefix + ".", 0) == 0);
    if (match && prefix.size() >= best_len) {
      best = &device;
      best_len = prefix.size();
    }
  }
  return *best;
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
                                                bool have_cuda_backend) {
  PlacementPlan plan;
  auto check = [&](const Device& device, const std::string& what) -> absl::Status {
    if (!device.is_cpu() && !have_cuda_backend) {
      return absl::UnimplementedError(absl::StrCat("device_map ", what, " places modules on ",
                                                   device.ToString(),
                                                   " but this build runs models on the CPU only"));
    }
    return absl::OkStatus();
  };
  if (!options.explicit_map.empty()) {
    for (const auto& [module, device_text] : options.explicit_map) {
      KBITD_ASSIGN_OR_RETURN(Device device, ParseDevice(device_text));
      KBITD_RETURN_IF_ERROR(check(device, absl::StrCat("entry \"", module, "\"")));
      plan.module_devices[module] = device;
    }
  } else if (options.device_map == "auto" || options.device_map == "sequential" ||
             options.device_map.empty()) {
    plan.default_device = have_cuda_backend ? Device::Cuda(0) : Device::Cpu();
  } else {
    KBITD_ASSIGN_OR_RETURN(plan.default_device, ParseDevice(options.device_map));
    KBITD_RETURN_IF_ERROR(check(plan.default_device, absl::StrCat("\"", options.device_map, "\"")));
  }
  for (const auto& [key, bytes] : options.max_memory) {
    if (bytes < 0) {
      return absl::InvalidArgumentError(absl::StrCat("max_memory[\"", key, "\"] must be >= 0"));
    }
    KBITD_ASSIGN_OR_RETURN(Device device, ParseDevice(key));
    plan.max_memory[device.ToString()] = bytes;
  }
  return plan;
}

}  // namespace kbitd::runtime
