// The backend error contract (backend_errors_harness.h) on the CPU backend.
#include "tests/runtime/backend_errors_harness.h"

namespace kbitd::test {
namespace {

INSTANTIATE_TEST_SUITE_P(Cpu, BackendErrorsTest, testing::Values(CpuBackendTestParam()),
                         BackendTestName);

}  // namespace
}  // namespace kbitd::test
