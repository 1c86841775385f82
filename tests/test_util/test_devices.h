// Devices for tests: the host as a runtime::DeviceSet (its pool and CPU backend), as the daemon
// makes it at start.
#pragma once

#include <memory>

#include "runtime/backend.h"
#include "runtime/device_set.h"

namespace kbitd::test {

// A DeviceSet of its own (for tests that count bytes, set limits or observe the pool).
inline std::unique_ptr<runtime::DeviceSet> MakeTestDevices(
    const runtime::DeviceSet::Options& options = {}) {
  return runtime::DeviceSet::Create(options).value();
}

// One DeviceSet shared by the tests of a binary, as the models of a daemon share theirs.
inline runtime::DeviceSet& TestDevices() {
  static runtime::DeviceSet* const devices = MakeTestDevices().release();
  return *devices;
}

inline runtime::Backend& HostBackend(const runtime::DeviceSet& devices = TestDevices()) {
  return *devices.BackendFor(runtime::Device::Cpu()).value();
}

}  // namespace kbitd::test
