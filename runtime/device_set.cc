#include "runtime/device_set.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "runtime/cpu/cpu_backend.h"

namespace kbitd::runtime {

absl::StatusOr<std::unique_ptr<DeviceSet>> DeviceSet::Create(const Options& options) {
  if (options.cpu_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu threads must be >= 0, got ", options.cpu_threads));
  }
  std::unique_ptr<DeviceSet> set(new DeviceSet());
  std::vector<AcceleratorDevice> accelerators;
  if (options.accelerators) {
    KBITD_ASSIGN_OR_RETURN(accelerators, options.accelerators());
  }
  std::vector<Device> devices = {Device::Cpu()};
  for (const AcceleratorDevice& a : accelerators) devices.push_back(a.device);
  std::map<std::string, int64_t> limits;  // by canonical device name
  for (const auto& [key, bytes] : options.max_memory) {
    absl::StatusOr<Device> device = ParseDevice(key);
    if (!device.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_memory key \"", key, "\": ", device.status().message()));
    }
    bool present = false;
    for (const Device& d : devices) present = present || d == *device;
    if (!present) {
      return absl::InvalidArgumentError(absl::StrCat(
          "max_memory names ", device->ToString(), ", which this machine does not have (devices: ",
          absl::StrJoin(devices, ", ",
                        [](std::string* out, const Device& d) { out->append(d.ToString()); }),
          ")"));
    }
    limits[device->ToString()] = bytes;
  }
  auto add = [&](const Device& device, int64_t default_max_bytes,
                 std::unique_ptr<DeviceAllocator> allocator) -> absl::StatusOr<Entry*> {
    MemoryPool::Options pool_options;
    pool_options.device = device;
    auto limit = limits.find(device.ToString());
    pool_options.max_bytes = limit != limits.end() ? limit->second : default_max_bytes;
    pool_options.observer = options.observer;
    pool_options.allocator = std::move(allocator);
    Entry entry;
    entry.device = device;
    KBITD_ASSIGN_OR_RETURN(entry.pool, MemoryPool::Create(std::move(pool_options)));
    set->entries_.push_back(std::move(entry));
    return &set->entries_.back();
  };
  KBITD_ASSIGN_OR_RETURN(Entry * host, add(Device::Cpu(), 0, nullptr));
  host->backend = NewCpuBackend(options.cpu_threads);
  for (AcceleratorDevice& a : accelerators) {
    KBITD_ASSIGN_OR_RETURN(Entry * entry,
                           add(a.device, a.default_max_bytes, std::move(a.allocator)));
    KBITD_ASSIGN_OR_RETURN(entry->backend, a.make_backend(entry->pool));
  }
  return set;
}

std::vector<Device> DeviceSet::devices() const {
  std::vector<Device> out;
  for (const Entry& e : entries_) out.push_back(e.device);
  return out;
}

bool DeviceSet::Contains(const Device& device) const { return Find(device) != nullptr; }

const DeviceSet::Entry* DeviceSet::Find(const Device& device) const {
  for (const Entry& e : entries_) {
    if (e.device == device) return &e;
  }
  return nullptr;
}

absl::Status DeviceSet::NotHere(const Device& device) const {
  std::vector<std::string> names;
  for (const Entry& e : entries_) names.push_back(e.device.ToString());
  return absl::NotFoundError(absl::StrCat("device ", device.ToString(),
                                          " is not one of this process's devices (",
                                          absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<std::shared_ptr<MemoryPool>> DeviceSet::Pool(const Device& device) const {
  const Entry* e = Find(device);
  if (e == nullptr) return NotHere(device);
  return e->pool;
}

absl::StatusOr<Backend*> DeviceSet::BackendFor(const Device& device) const {
  const Entry* e = Find(device);
  if (e == nullptr) return NotHere(device);
  return e->backend.get();
}

}  // namespace kbitd::runtime
