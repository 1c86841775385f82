// The fused small-batch 4-bit linear (runtime/cuda/four_bit_linear.h) against a double-precision
// reference of what it promises: codes rounded to the activations' dtype, each 64-code chunk's
// fp32 sum scaled by its (possibly double-quantized) absmax. Every batch size 1–16 (both MMA batch
// tiles, rows past m untouched), NF4 and FP4, blocksizes 64–4096, bf16 and fp16, fp32 and 16-bit
// outputs, and the problems it must refuse. Skipped without a GPU.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/device.h"
#include "quant/double_quant.h"
#include "runtime/cuda/four_bit_linear.h"

namespace kbitd::runtime::cuda {
namespace {

using quant::cuda::DeviceBuffer;

struct Problem {
  quant::FourBitType type = quant::FourBitType::kNf4;
  int64_t n = 64;
  int64_t k = 256;
  int64_t blocksize = 64;
  bool nested = false;
  ScalarType dtype = ScalarType::kBFloat16;
  ScalarType y_dtype = ScalarType::kBFloat16;
};

float RoundTo(ScalarType dtype, float v) {
  uint32_t storage = 0;  // room for any float dtype
  StoreFromFloat(&storage, dtype, 0, v);
  return LoadAsFloat(&storage, dtype, 0);
}

class FourBitLinearTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (quant::cuda::DeviceCount() == 0) GTEST_SKIP() << "no GPU";
  }

  // Runs one problem for every m in `rows` and checks y against the reference.
  void Check(const Problem& p, std::vector<int64_t> rows) {
    std::mt19937 rng(static_cast<uint32_t>(p.n * 131 + p.k * 7 + p.blocksize + p.nested));
    std::normal_distribution<float> normal(0.f, 0.02f);
    const int64_t count = p.n * p.k, blocks = quant::NumBlocks(count, p.blocksize);
    std::vector<float> dense(count);
    for (float& v : dense) v = normal(rng);
    std::vector<uint8_t> packed(quant::Packed4bitBytes(count));
    std::vector<float> absmax(blocks);
    ASSERT_TRUE(quant::Quantize4bit(p.type, dense.data(), ScalarType::kFloat32, count, p.blocksize,
                                    packed.data(), absmax.data())
                    .ok());
    const auto& code = p.type == quant::FourBitType::kNf4 ? quant::Nf4Code() : quant::Fp4Code();

    auto d_packed = *DeviceBuffer::Allocate(packed.size());
    ASSERT_TRUE(d_packed.CopyFromHost(packed.data(), packed.size()).ok());
    FourBitLinearWeight w{.packed = d_packed.as<const uint8_t>(),
                          .n = p.n,
                          .k = p.k,
                          .blocksize = p.blocksize,
                          .code = code};
    DeviceBuffer d_absmax, d_codes, d_nested, d_map;
    std::vector<float> effective_absmax = absmax;
    if (p.nested) {
      auto nested = quant::DoubleQuantizeAbsmax(absmax.data(), blocks);
      ASSERT_TRUE(nested.ok());
      ASSERT_TRUE(quant::ReconstructAbsmax(*nested, blocks, effective_absmax.data()).ok());
      d_codes = *DeviceBuffer::Allocate(nested->codes.size());
      ASSERT_TRUE(d_codes.CopyFromHost(nested->codes.data(), nested->codes.size()).ok());
      d_nested = *DeviceBuffer::Allocate(nested->nested_absmax.size() * 4);
      ASSERT_TRUE(
          d_nested.CopyFromHost(nested->nested_absmax.data(), nested->nested_absmax.size() * 4)
              .ok());
      d_map = *DeviceBuffer::Allocate(256 * 4);
      ASSERT_TRUE(d_map.CopyFromHost(quant::DynamicMap().data(), 256 * 4).ok());
      w.absmax_codes = d_codes.as<const uint8_t>();
      w.nested_absmax = d_nested.as<const float>();
      w.nested_code = d_map.as<const float>();
      w.nested_offset = nested->offset;
    } else {
      d_absmax = *DeviceBuffer::Allocate(absmax.size() * 4);
      ASSERT_TRUE(d_absmax.CopyFromHost(absmax.data(), absmax.size() * 4).ok());
      w.absmax = d_absmax.as<const float>();
    }

    for (int64_t m : rows) {
      SCOPED_TRACE(::testing::Message()
                   << "m=" << m << " n=" << p.n << " k=" << p.k << " blocksize=" << p.blocksize
                   << " nested=" << p.nested << " " << TorchDtypeName(p.dtype) << " -> "
                   << TorchDtypeName(p.y_dtype));
      ASSERT_TRUE(FourBitLinearFits(m, w, p.dtype, p.y_dtype));
      std::vector<uint16_t> x(m * p.k);
      std::normal_distribution<float> activation(0.f, 1.f);
      for (size_t i = 0; i < x.size(); ++i) StoreFromFloat(x.data(), p.dtype, i, activation(rng));
      auto d_x = *DeviceBuffer::Allocate(x.size() * 2);
      ASSERT_TRUE(d_x.CopyFromHost(x.data(), x.size() * 2).ok());
      // One spare row past m: the kernel must not write it.
      const size_t y_element = ScalarTypeSize(p.y_dtype);
      auto d_y = *DeviceBuffer::Allocate((m + 1) * p.n * y_element);
      for (const FourBitLinearTuning& tuning : FourBitLinearVariants()) {
        SCOPED_TRACE(::testing::Message()
                     << "variant " << tuning.warps << "/" << tuning.unroll << "/"
                     << tuning.table_copies << "/" << tuning.min_blocks);
        ASSERT_TRUE(d_y.Fill(0x7F).ok());
        ASSERT_TRUE(
            LaunchFourBitLinear(w, d_x.data(), m, p.dtype, d_y.data(), p.y_dtype, nullptr, tuning)
                .ok());
        ASSERT_TRUE(quant::cuda::SynchronizeStream(nullptr).ok());
        std::vector<uint8_t> y((m + 1) * p.n * y_element);
        ASSERT_TRUE(d_y.CopyToHost(y.data(), y.size()).ok());
        ExpectMatches(p, packed, code, effective_absmax, x, y, m);
      }
    }
  }

  // y (m + 1 rows of y_dtype, the last one poisoned) against the double-precision reference.
  void ExpectMatches(const Problem& p, const std::vector<uint8_t>& packed,
                     const std::array<float, 16>& code, const std::vector<float>& effective_absmax,
                     const std::vector<uint16_t>& x, const std::vector<uint8_t>& y, int64_t m) {
    const size_t y_element = ScalarTypeSize(p.y_dtype);
    int bad = 0;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t o = 0; o < p.n; ++o) {
        double sum = 0, magnitude = 0;
        for (int64_t c = 0; c < p.k; c += 64) {
          double chunk = 0;
          for (int64_t i = c; i < c + 64; ++i) {
            const int64_t flat = o * p.k + i;
            const uint8_t byte = packed[flat / 2];
            const int q = flat % 2 == 0 ? byte >> 4 : byte & 15;
            const double term = static_cast<double>(RoundTo(p.dtype, code[q])) *
                                LoadAsFloat(x.data(), p.dtype, r * p.k + i);
            chunk += term;
            magnitude += std::fabs(term * effective_absmax[flat / p.blocksize]);
          }
          sum += chunk * effective_absmax[(o * p.k + c) / p.blocksize];
        }
        const double got = LoadAsFloat(y.data(), p.y_dtype, r * p.n + o);
        const double rounding = p.y_dtype == ScalarType::kFloat32 ? 0
                                : p.y_dtype == ScalarType::kBFloat16
                                    ? std::fabs(sum) * (1.0 / 256)
                                    : std::fabs(sum) * (1.0 / 2048);
        if (std::fabs(got - sum) > 1e-5 * magnitude + rounding + 1e-30 && ++bad <= 5) {
          ADD_FAILURE() << "y[" << r << ", " << o << "] = " << got << ", want " << sum;
        }
      }
    }
    EXPECT_EQ(bad, 0);
    std::vector<uint8_t> untouched(p.n * y_element, 0x7F);
    EXPECT_TRUE(std::equal(untouched.begin(), untouched.end(), y.begin() + m * p.n * y_element))
        << "the kernel wrote past row m";
  }
};

TEST_F(FourBitLinearTest, Nf4EveryBatchSizeInBFloat16) {
  Check({.n = 48, .k = 576}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16});
}

TEST_F(FourBitLinearTest, Fp4InFloat16WithFloat32Output) {
  Check({.type = quant::FourBitType::kFp4,
         .n = 32,
         .k = 1024,
         .blocksize = 128,
         .dtype = ScalarType::kFloat16,
         .y_dtype = ScalarType::kFloat32},
        {1, 8, 16});
}

TEST_F(FourBitLinearTest, DoubleQuantizedAbsmaxIsDecodedInTheKernel) {
  // 8192 blocks of 64: several nested blocks of 256.
  Check({.n = 256, .k = 2048, .blocksize = 64, .nested = true}, {1, 4, 11});
  Check({.type = quant::FourBitType::kFp4,
         .n = 64,
         .k = 4096,
         .blocksize = 256,
         .nested = true,
         .dtype = ScalarType::kFloat16,
         .y_dtype = ScalarType::kFloat16},
        {1, 16});
}

TEST_F(FourBitLinearTest, BlocksLargerThanARowSpanRows) {
  // k = 192 with blocksize 4096: one absmax covers many rows of the flat array.
  Check({.n = 128, .k = 192, .blocksize = 4096}, {1, 10});
  Check({.n = 16, .k = 64, .blocksize = 1024, .y_dtype = ScalarType::kFloat32}, {3});
}

TEST_F(FourBitLinearTest, LongRowsSplitOverEveryWarpWithATail) {
  // 14336 / 64 = 224 chunks: 28 per warp, not a multiple of the unroll.
  Check({.n = 16, .k = 14336, .blocksize = 64}, {1, 16});
  Check({.n = 32, .k = 64 * 13, .blocksize = 64}, {2});  // fewer chunks than warps
}

TEST(FourBitLinearFitsTest, RefusesProblemsItDoesNotTake) {
  FourBitLinearWeight w{.packed = reinterpret_cast<const uint8_t*>(256),
                        .n = 64,
                        .k = 256,
                        .blocksize = 64,
                        .code = quant::Nf4Code(),
                        .absmax = reinterpret_cast<const float*>(256)};
  EXPECT_TRUE(FourBitLinearFits(16, w, ScalarType::kBFloat16, ScalarType::kBFloat16));
  EXPECT_FALSE(FourBitLinearFits(17, w, ScalarType::kBFloat16, ScalarType::kBFloat16));
  EXPECT_FALSE(FourBitLinearFits(0, w, ScalarType::kBFloat16, ScalarType::kBFloat16));
  EXPECT_FALSE(FourBitLinearFits(1, w, ScalarType::kFloat32, ScalarType::kFloat32));
  EXPECT_FALSE(FourBitLinearFits(1, w, ScalarType::kBFloat16, ScalarType::kFloat16));
  FourBitLinearWeight odd = w;
  odd.k = 96;
  EXPECT_FALSE(FourBitLinearFits(1, odd, ScalarType::kBFloat16, ScalarType::kBFloat16));
  odd = w;
  odd.n = 40;
  EXPECT_FALSE(FourBitLinearFits(1, odd, ScalarType::kBFloat16, ScalarType::kBFloat16));
  odd = w;
  odd.blocksize = 32;
  EXPECT_FALSE(FourBitLinearFits(1, odd, ScalarType::kBFloat16, ScalarType::kBFloat16));
  odd = w;
  odd.absmax = nullptr;
  EXPECT_FALSE(FourBitLinearFits(1, odd, ScalarType::kBFloat16, ScalarType::kBFloat16));
  const absl::Status refused =
      LaunchFourBitLinear(odd, reinterpret_cast<const void*>(256), 1, ScalarType::kBFloat16,
                          reinterpret_cast<void*>(256), ScalarType::kBFloat16, nullptr);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
}

}  // namespace
}  // namespace kbitd::runtime::cuda
