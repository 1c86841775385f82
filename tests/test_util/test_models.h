// The golden models of tests/data/models (tiny llama, mistral and qwen2 checkpoints in every
// weight format), loaded the way the daemon loads them. Header-only: KBITD_TEST_DATA_DIR is a
// definition of each test binary.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::test {

// tests/data/models; `relative` ("llama/fp32") appended when given.
inline std::string TestModelPath(const std::string& relative = "") {
  const std::string models = std::string(KBITD_TEST_DATA_DIR) + "/models";
  return relative.empty() ? models : models + "/" + relative;
}

// Loads tests/data/models/<relative> as `name` (its owner name in the pools) into `devices`.
inline absl::StatusOr<std::shared_ptr<runtime::Model>> LoadTestModel(
    const std::string& relative, const std::string& name = "model",
    const runtime::DeviceSet& devices = TestDevices()) {
  runtime::LoadOptions options;
  options.devices = &devices;
  options.name = name;
  options.path = TestModelPath(relative);
  return runtime::LoadModel(options);
}

}  // namespace kbitd::test
