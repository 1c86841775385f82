// The encoders the kernels use must equal the shared reference encoders on every one of the 2^32
// float bit patterns (NaN, Inf, subnormals and every threshold included): the NF4 / FP4 comparison
// trees and branch-free forms, and the 8-bit rank encoder with the dynamic map and with another
// ascending map. Skips without a GPU.
#include <algorithm>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/codebooks.h"
#include "quant/cuda/encoder_check.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

void ExpectNoMismatches(const std::vector<float>& code) {
  auto d_code = testing::ToDevice(code);
  absl::StatusOr<EncoderMismatches> m =
      CountEncoderMismatches(static_cast<const float*>(d_code.data), nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->nf4, 0u);
  EXPECT_EQ(m->fp4, 0u);
  EXPECT_EQ(m->dynamic8, 0u);
  EXPECT_EQ(m->nf4_select, 0u);
  EXPECT_EQ(m->fp4_select, 0u);
}

TEST(CudaEncoderCheckTest, DeviceEncodersEqualReferenceOnAllInputs) {
  KBITD_SKIP_WITHOUT_GPU();
  ExpectNoMismatches({DynamicMap().begin(), DynamicMap().end()});
}

TEST(CudaEncoderCheckTest, MapRankEncoderEqualsReferenceForAnotherAscendingMap) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-3.0f, 2.0f);
  std::vector<float> code(256);
  for (auto& v : code) v = u(rng);
  std::sort(code.begin(), code.end());
  ExpectNoMismatches(code);
}

}  // namespace
}  // namespace kbitd::quant::cuda
