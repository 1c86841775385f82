// Where a buffer lives: the host or one CUDA device.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kbitd::runtime {

struct Device {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int index = 0;

  static Device Cpu() { return Device{}; }
  static Device Cuda(int index) { return Device{Kind::kCuda, index}; }
  bool is_cpu() const { return kind == Kind::kCpu; }
  // "cpu" or "cuda:N" (torch / device_map spelling).
  std::string ToString() const;
  friend bool operator==(const Device& a, const Device& b) {
    return a.kind == b.kind && (a.kind == Kind::kCpu || a.index == b.index);
  }
};

// Parses "cpu", "cuda", "cuda:N" or a bare GPU index "N" (accelerate's device_map values).
absl::StatusOr<Device> ParseDevice(const std::string& text);

}  // namespace kbitd::runtime
