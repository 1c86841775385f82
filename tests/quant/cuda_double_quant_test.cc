// CUDA double quantization of the 4-bit absmax must give the CPU reference's bytes exactly: the
// offset (a mean that the GPU reduces in parallel), codes, nested absmax and the reconstructed
// absmax, including inputs that force the sequential fallback. Skips without a GPU.
#include <cfloat>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/device.h"
#include "quant/cuda/double_quant.h"
#include "quant/double_quant.h"
#include "tests/quant/cuda_test_util.h"

namespace kbitd::quant::cuda {
namespace {

using testing::CompareBytes;
using testing::FromDevice;
using testing::PoisonedOutput;
using testing::ToDevice;

// Positive absmax values spread over `decades` decades.
std::vector<float> RandomAbsmax(int64_t n, float decades, std::mt19937& rng) {
  std::uniform_real_distribution<float> e(-decades, 0.0f);
  std::vector<float> a(n);
  for (auto& v : a) v = std::pow(10.0f, e(rng));
  return a;
}

void CheckAbsmax(const std::vector<float>& absmax, const std::string& what) {
  SCOPED_TRACE(absl::StrCat(what, " nblocks=", absmax.size()));
  const int64_t nblocks = static_cast<int64_t>(absmax.size());
  absl::StatusOr<NestedAbsmax> cpu = quant::DoubleQuantizeAbsmax(absmax.data(), nblocks);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const int64_t nested_count = NumBlocks(nblocks, kNestedBlocksize);

  auto d_code = ToDevice(cpu->nested_code);
  auto d_absmax = ToDevice(absmax);
  auto d_codes = PoisonedOutput(nblocks);
  auto d_nested = PoisonedOutput(nested_count * sizeof(float));
  auto d_offset = PoisonedOutput(sizeof(float));
  ASSERT_TRUE(DoubleQuantizeAbsmax(
                  static_cast<const float*>(d_absmax.data), nblocks,
                  static_cast<const float*>(d_code.data), static_cast<uint8_t*>(d_codes.data),
                  static_cast<float*>(d_nested.data), static_cast<float*>(d_offset.data), nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(std::vector<float>{cpu->offset}, FromDevice<float>(d_offset, 1)), "")
      << "offset " << cpu->offset;
  EXPECT_EQ(CompareBytes(cpu->codes, FromDevice<uint8_t>(d_codes, nblocks)), "") << "codes";
  EXPECT_EQ(CompareBytes(cpu->nested_absmax, FromDevice<float>(d_nested, nested_count)), "")
      << "nested absmax";

  std::vector<float> expected(nblocks);
  ASSERT_TRUE(quant::ReconstructAbsmax(*cpu, nblocks, expected.data()).ok());
  auto d_out = PoisonedOutput(nblocks * sizeof(float));
  ASSERT_TRUE(ReconstructAbsmax(static_cast<const uint8_t*>(d_codes.data),
                                static_cast<const float*>(d_nested.data),
                                static_cast<const float*>(d_code.data), cpu->offset, nblocks,
                                static_cast<float*>(d_out.data), nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(expected, FromDevice<float>(d_out, nblocks)), "") << "reconstructed";
}

TEST(CudaDoubleQuantTest, MatchesCpuForManySizes) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  // One CTA up to 2048 values, partial sums in the codes buffer above.
  for (int64_t n : {1, 2, 7, 255, 256, 257, 2048, 2049, 4099, 65537, 300001, 1 << 20}) {
    CheckAbsmax(RandomAbsmax(n, 3.0f, rng), "typical");
  }
}

TEST(CudaDoubleQuantTest, MatchesCpuWhenTheParallelSumCouldRound) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  for (int64_t n : {300, 100000}) {
    // 30 decades: partial sums round, so the offset comes from the sequential fallback.
    CheckAbsmax(RandomAbsmax(n, 30.0f, rng), "wide range");
    std::vector<float> a = RandomAbsmax(n, 2.0f, rng);
    a[n / 3] = -FLT_MAX;  // an all-NaN block (bnb and the CPU reference give -FLT_MAX)
    CheckAbsmax(a, "negative");
    a[n / 3] = std::numeric_limits<float>::infinity();  // a block holding Inf
    CheckAbsmax(a, "infinite");
    a.assign(n, 0.0f);  // an all-zero tensor
    a[n - 1] = 1e-3f;
    CheckAbsmax(a, "zeros");
  }
}

// The whole nested path as a loader runs it: quantize on the GPU, double-quantize the absmax,
// reconstruct it and dequantize with it, against the same chain on the CPU.
TEST(CudaDoubleQuantTest, NestedNf4ChainMatchesCpu) {
  KBITD_SKIP_WITHOUT_GPU();
  const uint32_t seed = testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  const int64_t n = 512 * 1000 + 64 * 3, bs = 64, nblocks = NumBlocks(n, bs);
  const std::vector<uint8_t> input =
      testing::Encode(testing::RandomFloats(n, rng, false), ScalarType::kBFloat16);

  std::vector<uint8_t> packed(Packed4bitBytes(n));
  std::vector<float> absmax(nblocks);
  ASSERT_TRUE(quant::Quantize4bit(FourBitType::kNf4, input.data(), ScalarType::kBFloat16, n, bs,
                                  packed.data(), absmax.data())
                  .ok());
  absl::StatusOr<NestedAbsmax> nested = quant::DoubleQuantizeAbsmax(absmax.data(), nblocks);
  ASSERT_TRUE(nested.ok());
  std::vector<float> restored(nblocks);
  ASSERT_TRUE(quant::ReconstructAbsmax(*nested, nblocks, restored.data()).ok());
  std::vector<uint8_t> expected(n * 2);
  ASSERT_TRUE(quant::Dequantize4bit(FourBitType::kNf4, packed.data(), restored.data(), n, bs,
                                    ScalarType::kBFloat16, expected.data())
                  .ok());

  auto d_input = ToDevice(input);
  auto d_packed = PoisonedOutput(packed.size());
  auto d_absmax = PoisonedOutput(nblocks * sizeof(float));
  auto d_code = ToDevice(nested->nested_code);
  auto d_codes = PoisonedOutput(nblocks);
  auto d_nested = PoisonedOutput(NumBlocks(nblocks, 256) * sizeof(float));
  auto d_offset = PoisonedOutput(sizeof(float));
  auto d_restored = PoisonedOutput(nblocks * sizeof(float));
  auto d_out = PoisonedOutput(n * 2);
  ASSERT_TRUE(Quantize4bit(FourBitType::kNf4, d_input.data, ScalarType::kBFloat16, n, bs,
                           static_cast<uint8_t*>(d_packed.data), static_cast<float*>(d_absmax.data),
                           nullptr)
                  .ok());
  ASSERT_TRUE(DoubleQuantizeAbsmax(
                  static_cast<const float*>(d_absmax.data), nblocks,
                  static_cast<const float*>(d_code.data), static_cast<uint8_t*>(d_codes.data),
                  static_cast<float*>(d_nested.data), static_cast<float*>(d_offset.data), nullptr)
                  .ok());
  const float offset = FromDevice<float>(d_offset, 1)[0];
  EXPECT_EQ(CompareBytes(std::vector<float>{nested->offset}, std::vector<float>{offset}), "");
  ASSERT_TRUE(ReconstructAbsmax(static_cast<const uint8_t*>(d_codes.data),
                                static_cast<const float*>(d_nested.data),
                                static_cast<const float*>(d_code.data), offset, nblocks,
                                static_cast<float*>(d_restored.data), nullptr)
                  .ok());
  ASSERT_TRUE(Dequantize4bit(FourBitType::kNf4, static_cast<const uint8_t*>(d_packed.data),
                             static_cast<const float*>(d_restored.data), n, bs,
                             ScalarType::kBFloat16, d_out.data, nullptr)
                  .ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  EXPECT_EQ(CompareBytes(expected, FromDevice<uint8_t>(d_out, n * 2)), "");
}

TEST(CudaDoubleQuantTest, RejectsEmptyInput) {
  EXPECT_EQ(DoubleQuantizeAbsmax(nullptr, 0, nullptr, nullptr, nullptr, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::quant::cuda
