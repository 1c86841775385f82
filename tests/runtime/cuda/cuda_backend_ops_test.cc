// The op-by-op backend suite and the error contract on the CUDA backend (cuda:0): in bfloat16, the
// serving dtype, with bfloat16's tolerances, and in float32 with float32's. Skipped without a GPU.
#include "runtime/cuda/cuda_devices.h"
#include "runtime/device_set.h"
#include "tests/runtime/backend_errors_harness.h"
#include "tests/runtime/backend_test_harness.h"

namespace kbitd::test {
namespace {

BackendTestParam CudaParam(const char* name, ScalarType compute_dtype, double rel) {
  BackendTestParam param;
  param.name = name;
  param.compute_dtype = compute_dtype;
  param.make = []() -> absl::StatusOr<BackendUnderTest> {
    static absl::StatusOr<std::shared_ptr<runtime::DeviceSet>> devices =
        []() -> absl::StatusOr<std::shared_ptr<runtime::DeviceSet>> {
      runtime::DeviceSet::Options options;
      options.accelerators = runtime::cuda::DiscoverCudaDevices;
      absl::StatusOr<std::unique_ptr<runtime::DeviceSet>> made =
          runtime::DeviceSet::Create(options);
      if (!made.ok()) return made.status();
      return std::shared_ptr<runtime::DeviceSet>(std::move(*made));
    }();
    if (!devices.ok()) return devices.status();
    const runtime::Device gpu = runtime::Device::Cuda(0);
    if (!(*devices)->Contains(gpu)) return absl::UnavailableError("no GPU");
    absl::StatusOr<runtime::Backend*> backend = (*devices)->BackendFor(gpu);
    if (!backend.ok()) return backend.status();
    return BackendUnderTest{*backend, *(*devices)->Pool(gpu), *devices};
  };
  // Each result is rounded once to the compute dtype (half an ulp: 2^-9 for bfloat16), after an
  // fp32 accumulation whose order differs from the reference's.
  param.elementwise = {1e-6, rel};
  param.reduction = {1e-5, rel};
  param.int8 = {1e-5, rel};
  return param;
}

INSTANTIATE_TEST_SUITE_P(Cuda, BackendOpsTest,
                         testing::Values(CudaParam("CudaBf16", ScalarType::kBFloat16, 8e-3),
                                         CudaParam("CudaF32", ScalarType::kFloat32, 2e-5)),
                         BackendTestName);
INSTANTIATE_TEST_SUITE_P(Cuda, BackendErrorsTest,
                         testing::Values(CudaParam("CudaBf16", ScalarType::kBFloat16, 8e-3)),
                         BackendTestName);

}  // namespace
}  // namespace kbitd::test
