// The CPU backend's vector kernels against plain double-precision references, and the
// double-quant row scales against the per-block formula.
#include "runtime/cpu/cpu_kernels.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/cpu/cpu_backend.h"

namespace kbitd::runtime::cpu {
namespace {

struct Packed4bit {
  int64_t rows, cols, blocksize;
  std::vector<uint8_t> packed;  // bnb order: element 2j in the high nibble of byte j
  std::vector<float> scales;
  std::vector<float> code;
};

Packed4bit MakePacked(int64_t rows, int64_t cols, int64_t blocksize, uint32_t seed) {
  std::mt19937 rng(seed);
  Packed4bit p{rows,
               cols,
               blocksize,
               std::vector<uint8_t>(rows * cols / 2),
               std::vector<float>(rows * cols / blocksize),
               std::vector<float>(16)};
  for (auto& b : p.packed) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& s : p.scales) s = std::fabs(u(rng)) + 0.01f;
  for (auto& c : p.code) c = u(rng);
  return p;
}

double ReferenceDot(const Packed4bit& p, int64_t row, const std::vector<float>& x) {
  double sum = 0;
  for (int64_t i = 0; i < p.cols; ++i) {
    const int64_t idx = row * p.cols + i;
    const uint8_t byte = p.packed[idx / 2];
    const int code = i % 2 == 0 ? byte >> 4 : byte & 0xF;
    sum += static_cast<double>(p.code[code]) * p.scales[idx / p.blocksize] * x[i];
  }
  return sum;
}

TEST(CpuKernelsTest, Dot4bitMatchesReferenceForEveryBlocksize) {
  for (int64_t blocksize : {32, 64, 128, 256, 4096}) {
    const int64_t cols = blocksize == 4096 ? 4096 : 1024;
    Packed4bit p = MakePacked(3, cols, blocksize, static_cast<uint32_t>(blocksize));
    std::vector<float> x(cols), xd(cols);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-2, 2);
    for (auto& v : x) v = u(rng);
    DeinterleaveForDot4bit(x.data(), cols, xd.data());
    const int64_t blocks_per_row = cols / blocksize;
    for (int64_t row = 0; row < 3; ++row) {
      const float got =
          Dot4bit(p.packed.data() + row * cols / 2, p.scales.data() + row * blocks_per_row,
                  p.code.data(), xd.data(), cols, blocksize);
      const double want = ReferenceDot(p, row, x);
      EXPECT_NEAR(got, want, 1e-4 * (1 + std::fabs(want))) << "blocksize " << blocksize;
    }
  }
}

TEST(CpuKernelsTest, Dequantize4bitRowIsCodeTimesScale) {
  Packed4bit p = MakePacked(1, 128, 32, 5);
  std::vector<float> out(128);
  Dequantize4bitRow(p.packed.data(), p.scales.data(), p.code.data(), 128, 32, out.data());
  for (int64_t i = 0; i < 128; ++i) {
    const uint8_t byte = p.packed[i / 2];
    EXPECT_EQ(out[i], p.code[i % 2 == 0 ? byte >> 4 : byte & 0xF] * p.scales[i / 32]) << i;
  }
}

TEST(CpuKernelsTest, DotAndAxpyMatchReferenceWithTails) {
  for (int64_t n : {1, 15, 16, 33, 1000}) {
    std::vector<float> a(n), b(n), y(n, 0.5f);
    for (int64_t i = 0; i < n; ++i) {
      a[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
      b[i] = 0.02f * static_cast<float>(i % 13) + 0.1f;
    }
    double want = 0;
    for (int64_t i = 0; i < n; ++i) want += static_cast<double>(a[i]) * b[i];
    EXPECT_NEAR(Dot(a.data(), b.data(), n), want, 1e-5 * (1 + std::fabs(want))) << n;
    Axpy(2.0f, a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], 0.5f + 2.0f * a[i]) << n;
  }
}

}  // namespace
}  // namespace kbitd::runtime::cpu
