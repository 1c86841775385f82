#include "quant/blockwise_8bit.h"

#include <cfloat>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/double_quant.h"

namespace kbitd::quant {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(Blockwise8bitTest, RoundTripIsNearestMapEntry) {
  const float* code = DynamicMap().data();
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t n = 1000;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  std::vector<uint8_t> codes(n);
  std::vector<float> absmax(NumBlocks(n, 256));
  ASSERT_TRUE(QuantizeBlockwise8bit(code, x.data(), ScalarType::kFloat32, n, 256, codes.data(),
                                    absmax.data())
                  .ok());
  std::vector<float> out(n);
  ASSERT_TRUE(DequantizeBlockwise8bit(code, codes.data(), absmax.data(), n, 256,
                                      ScalarType::kFloat32, out.data())
                  .ok());
  for (int64_t k = 0; k < n; ++k) {
    const float amax = absmax[k / 256];
    EXPECT_EQ(out[k], code[codes[k]] * amax);
    // Largest gap of the dynamic map is 0.9/64 near 1: the error is at most half of it.
    EXPECT_LE(std::fabs(out[k] - x[k]), 0.0071f * amax) << k;
  }
}

TEST(Blockwise8bitTest, AllZeroAndAllNaNBlocksFollowBnbCuda) {
  const float* code = DynamicMap().data();
  std::vector<float> x(64 * 2 + 10, 0.0f);
  for (int i = 64; i < 138; ++i) x[i] = kNaN;  // one full all-NaN block, a partial all-NaN block
  std::vector<uint8_t> codes(x.size(), 0xEE);
  std::vector<float> absmax(3);
  ASSERT_TRUE(QuantizeBlockwise8bit(code, x.data(), ScalarType::kFloat32, x.size(), 64,
                                    codes.data(), absmax.data())
                  .ok());
  EXPECT_EQ(absmax[0], 0.0f);
  EXPECT_EQ(absmax[1], -FLT_MAX);  // kQuantizeBlockwise starts its fmaxf reduction at -FLT_MAX
  EXPECT_EQ(absmax[2], 0.0f);      // a partial block also reduces the kernel's zero padding
  for (uint8_t c : codes) EXPECT_EQ(c, 0);  // 0 * Inf and NaN both end at code 0
}

TEST(Blockwise8bitTest, InvalidArgumentsAreRejected) {
  const float* code = DynamicMap().data();
  std::vector<float> x(64, 1.0f);
  std::vector<uint8_t> codes(64);
  std::vector<float> absmax(2);
  for (int64_t bs : {32, 96, 8192}) {
    EXPECT_EQ(QuantizeBlockwise8bit(code, x.data(), ScalarType::kFloat32, 64, bs, codes.data(),
                                    absmax.data())
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << bs;
  }
  EXPECT_EQ(QuantizeBlockwise8bit(nullptr, x.data(), ScalarType::kFloat32, 64, 64, codes.data(),
                                  absmax.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeBlockwise8bit(code, codes.data(), absmax.data(), 64, 64, ScalarType::kInt32,
                                    x.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DoubleQuantTest, OffsetIsMeanAndReconstructionIsClose) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(0.01f, 3.0f);
  const int64_t nblocks = 700;  // three nested blocks, the last partial
  std::vector<float> absmax(nblocks);
  for (auto& v : absmax) v = dist(rng);
  auto nested = DoubleQuantizeAbsmax(absmax.data(), nblocks);
  ASSERT_TRUE(nested.ok()) << nested.status();
  double sum = 0;
  for (float v : absmax) sum += v;
  EXPECT_EQ(nested->offset, static_cast<float>(sum / nblocks));
  EXPECT_EQ(nested->codes.size(), 700u);
  EXPECT_EQ(nested->nested_absmax.size(), 3u);
  EXPECT_EQ(nested->nested_code.size(), 256u);
  EXPECT_EQ(nested->nested_blocksize, 256);
  std::vector<float> recon(nblocks);
  ASSERT_TRUE(ReconstructAbsmax(*nested, nblocks, recon.data()).ok());
  for (int64_t i = 0; i < nblocks; ++i) {
    const float scaled = nested->nested_code[nested->codes[i]] * nested->nested_absmax[i / 256];
    EXPECT_EQ(recon[i], scaled + nested->offset);  // two separate float32 roundings
    EXPECT_NEAR(recon[i], absmax[i], 0.0071f * nested->nested_absmax[i / 256]);
  }
}

TEST(DoubleQuantTest, InconsistentNestedStateIsRejected) {
  std::vector<float> absmax(10, 1.0f);
  auto nested = DoubleQuantizeAbsmax(absmax.data(), 10);
  ASSERT_TRUE(nested.ok());
  std::vector<float> out(10);
  EXPECT_EQ(ReconstructAbsmax(*nested, 11, out.data()).code(), absl::StatusCode::kInvalidArgument);
  NestedAbsmax bad = *nested;
  bad.nested_blocksize = 128;
  EXPECT_EQ(ReconstructAbsmax(bad, 10, out.data()).code(), absl::StatusCode::kInvalidArgument);
  bad = *nested;
  bad.nested_absmax.push_back(1.0f);
  EXPECT_EQ(ReconstructAbsmax(bad, 10, out.data()).code(), absl::StatusCode::kInvalidArgument);
  bad = *nested;
  bad.nested_code.pop_back();
  EXPECT_EQ(ReconstructAbsmax(bad, 10, out.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DoubleQuantizeAbsmax(absmax.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::quant
