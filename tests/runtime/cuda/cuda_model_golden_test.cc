// The model goldens (model_golden_suite.h) on the CUDA backend, cuda:0: every model and format
// the CPU backend matches transformers (+ bitsandbytes) on, within the same tolerances. Skipped
// without a GPU.
#include "runtime/cuda/cuda_devices.h"
#include "tests/runtime/model_golden_suite.h"

namespace kbitd::runtime {

const GoldenTarget& GetGoldenTarget() {
  static const GoldenTarget target = [] {
    GoldenTarget t;
    DeviceSet::Options options;
    options.accelerators = cuda::DiscoverCudaDevices;
    absl::StatusOr<std::unique_ptr<DeviceSet>> devices = DeviceSet::Create(options);
    if (!devices.ok()) {
      t.error = devices.status().ToString();
      return t;
    }
    if (!(*devices)->Contains(Device::Cuda(0))) return t;
    t.devices = devices->release();
    t.device_map = "cuda:0";
    t.backend = *t.devices->BackendFor(Device::Cuda(0));
    return t;
  }();
  return target;
}

}  // namespace kbitd::runtime
