// The model goldens (model_golden_suite.h) on the CPU backend.
#include "tests/runtime/model_golden_suite.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {

const GoldenTarget& GetGoldenTarget() {
  static const GoldenTarget target{&kbitd::test::TestDevices(), "cpu", &kbitd::test::HostBackend()};
  return target;
}

}  // namespace kbitd::runtime
