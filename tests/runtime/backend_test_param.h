// The parameter of the backend test suites (backend_test_harness.h, backend_errors_harness.h):
// how to make the backend under test, the pool of its device, and how close its results must come
// to the float64 references. Each backend's test binary instantiates the suites with its own
// parameter; the CPU backend's is CpuBackendTestParam().
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "runtime/backend.h"
#include "runtime/memory_pool.h"
#include "tests/test_util/device_tensors.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::test {

// A backend and the pool of its device. `owner` keeps both alive (a DeviceSet, a CUDA context).
struct BackendUnderTest {
  runtime::Backend* backend = nullptr;
  std::shared_ptr<runtime::MemoryPool> pool;
  std::shared_ptr<void> owner;
};

// |got - want| <= abs + rel * scale, where scale is the size of what the result is made of: |want|
// for an elementwise op, the sum of the absolute terms for a dot product or a softmax average (so
// cancellation in the sum does not demand more precision than the inputs carry).
struct Tolerance {
  double abs = 0;
  double rel = 0;
};

struct BackendTestParam {
  std::string name;  // the instantiation's test-name suffix
  // Makes the backend once per test. UNAVAILABLE (no GPU, say) skips the test.
  std::function<absl::StatusOr<BackendUnderTest>()> make;
  // The model compute dtype the tests ask ActivationDtype / KvCacheDtype for.
  ScalarType compute_dtype = ScalarType::kBFloat16;
  Tolerance elementwise;  // embedding, RMSNorm, RoPE, SiLU·mul, add
  Tolerance reduction;    // dense and 4-bit linear, attention
  Tolerance int8;         // LLM.int8 linear, beyond its own fp16 output rounding
};

// gtest prints the parameter of a failing test: its name, not its bytes.
inline void PrintTo(const BackendTestParam& param, std::ostream* os) { *os << param.name; }

inline std::string BackendTestName(const testing::TestParamInfo<BackendTestParam>& info) {
  return info.param.name;
}

// The CPU backend: float32 everywhere, so float32 rounding is all that separates it from float64.
inline BackendTestParam CpuBackendTestParam() {
  BackendTestParam param;
  param.name = "Cpu";
  param.make = []() -> absl::StatusOr<BackendUnderTest> {
    runtime::DeviceSet& devices = TestDevices();
    return BackendUnderTest{&HostBackend(devices), devices.host_pool(), nullptr};
  };
  param.elementwise = {1e-6, 1e-5};
  param.reduction = {1e-6, 1e-5};
  param.int8 = {1e-6, 1e-5};
  return param;
}

// Fixture of both suites: the backend, its pool and tensors on its device.
class BackendTestBase : public testing::TestWithParam<BackendTestParam> {
 protected:
  void SetUp() override {
    absl::StatusOr<BackendUnderTest> made = GetParam().make();
    if (absl::IsUnavailable(made.status())) GTEST_SKIP() << made.status();
    ASSERT_TRUE(made.ok()) << made.status();
    under_test_ = *std::move(made);
    ASSERT_NE(under_test_.backend, nullptr);
    ASSERT_NE(under_test_.pool, nullptr);
    ASSERT_EQ(under_test_.pool->device(), under_test_.backend->device());
    tensors_ = std::make_unique<DeviceTensors>(*under_test_.backend, *under_test_.pool);
  }
  // Ops may still run on the device's stream: finish them before their buffers go.
  void TearDown() override {
    if (under_test_.backend != nullptr) {
      EXPECT_TRUE(backend().Synchronize().ok());
    }
  }

  runtime::Backend& backend() { return *under_test_.backend; }
  runtime::MemoryPool& pool() { return *under_test_.pool; }
  DeviceTensors& tensors() { return *tensors_; }
  const runtime::Device& device() { return backend().device(); }
  ScalarType activation_dtype() { return backend().ActivationDtype(GetParam().compute_dtype); }
  ScalarType kv_dtype() { return backend().KvCacheDtype(GetParam().compute_dtype); }

 private:
  BackendUnderTest under_test_;
  std::unique_ptr<DeviceTensors> tensors_;
};

}  // namespace kbitd::test
