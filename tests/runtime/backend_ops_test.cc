// The op-by-op backend suite (backend_test_harness.h) on the CPU backend, the exact reference.
#include "tests/runtime/backend_test_harness.h"

namespace kbitd::test {
namespace {

INSTANTIATE_TEST_SUITE_P(Cpu, BackendOpsTest, testing::Values(CpuBackendTestParam()),
                         BackendTestName);

}  // namespace
}  // namespace kbitd::test
