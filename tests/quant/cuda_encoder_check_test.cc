// The kernels' branch-free NF4 / FP4 encoders must equal the shared reference encoders on every
// one of the 2^32 float bit patterns (NaN, Inf, subnormals and every threshold included). Skips
// without a GPU.
#include "gtest/gtest.h"
#include "quant/cuda/encoder_check.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

TEST(CudaEncoderCheckTest, BranchFreeEncodersEqualReferenceOnAllInputs) {
  KBITD_SKIP_WITHOUT_GPU();
  absl::StatusOr<EncoderMismatches> mismatches = CountEncoderMismatches(nullptr);
  ASSERT_TRUE(mismatches.ok()) << mismatches.status();
  EXPECT_EQ(mismatches->nf4, 0u);
  EXPECT_EQ(mismatches->fp4, 0u);
}

}  // namespace
}  // namespace kbitd::quant::cuda
