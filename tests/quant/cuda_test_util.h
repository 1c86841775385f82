// Helpers for the CUDA-vs-CPU byte-identity tests (tests/quant/cuda_*_test.cc): GPU detection,
// fresh random inputs with the special values that stress the kernels, device round trips with
// poisoned outputs, and byte comparison that reports where the first difference is.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/cuda/device.h"

namespace kbitd::quant::cuda::testing {

#define KBITD_SKIP_WITHOUT_GPU()                                                    \
  do {                                                                              \
    if (::kbitd::quant::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// The prologue of a randomized GPU test: skips without a GPU, else declares `std::mt19937 rng`
// seeded afresh, with the seed in every failure message of the test.
#define KBITD_GPU_TEST_RNG(rng)                                           \
  KBITD_SKIP_WITHOUT_GPU();                                               \
  const uint32_t rng##_seed = ::kbitd::quant::cuda::testing::FreshSeed(); \
  SCOPED_TRACE(absl::StrCat("seed ", rng##_seed));                        \
  std::mt19937 rng(rng##_seed)

inline constexpr uint8_t kPoison = 0xA5;

// A fresh seed per test run (printed by the callers' SCOPED_TRACE) so every run draws new inputs.
inline uint32_t FreshSeed() { return std::random_device{}(); }

// n floats: normal values with a random magnitude per run of 64 elements (10^-4 .. 10^2), plus
// when `specials`: exact zeros, zero runs, NaN, +-Inf, tiny and subnormal values, negative zero.
inline std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, bool specials) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> exponent(-4.0f, 2.0f);
  std::uniform_int_distribution<int> pick(0, 999);
  std::vector<float> x(n);
  float scale = 1.0f;
  int zero_run = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i % 64 == 0) {
      scale = std::pow(10.0f, exponent(rng));
      zero_run = (specials && pick(rng) < 20) ? 64 : 0;
    }
    x[i] = normal(rng) * scale;
    if (zero_run > 0) {
      x[i] = 0.0f;
      --zero_run;
      continue;
    }
    if (!specials) continue;
    const int p = pick(rng);
    if (p == 0) x[i] = std::numeric_limits<float>::quiet_NaN();
    if (p == 1) x[i] = std::numeric_limits<float>::infinity();
    if (p == 2) x[i] = -std::numeric_limits<float>::infinity();
    if (p == 3) x[i] = 0.0f;
    if (p == 4) x[i] = -0.0f;
    if (p == 5) x[i] = 1e-40f;  // subnormal in float32, zero in fp16/bf16-rounded weights
    if (p == 6) x[i] = -3e-8f;
  }
  return x;
}

// The floats as raw bytes of `type` (F32/F16/BF16, round-to-nearest-even).
inline std::vector<uint8_t> Encode(const std::vector<float>& x, ScalarType type) {
  std::vector<uint8_t> bytes(x.size() * ScalarTypeSize(type));
  for (size_t i = 0; i < x.size(); ++i) StoreFromFloat(bytes.data(), type, i, x[i]);
  return bytes;
}

// A device copy of `bytes` placed `misalign` bytes past a 256-byte aligned address (to exercise
// the unvectorized path), plus the pointer to the data.
struct DeviceCopy {
  DeviceBuffer buffer;
  void* data = nullptr;
};

inline DeviceCopy ToDevice(const void* bytes, size_t size, size_t misalign = 0) {
  DeviceCopy copy;
  auto buffer = DeviceBuffer::Allocate(size + misalign);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return copy;
  copy.buffer = *std::move(buffer);
  EXPECT_TRUE(copy.buffer.Fill(kPoison).ok());
  EXPECT_TRUE(copy.buffer.CopyFromHost(bytes, size, misalign).ok());
  copy.data = static_cast<char*>(copy.buffer.data()) + misalign;
  return copy;
}

template <typename T>
DeviceCopy ToDevice(const std::vector<T>& v, size_t misalign = 0) {
  return ToDevice(v.data(), v.size() * sizeof(T), misalign);
}

// A poisoned device output of `size` bytes at `misalign`.
inline DeviceCopy PoisonedOutput(size_t size, size_t misalign = 0) {
  std::vector<uint8_t> poison(size, kPoison);
  return ToDevice(poison, misalign);
}

template <typename T>
std::vector<T> FromDevice(const DeviceCopy& copy, size_t count) {
  std::vector<T> host(count);
  const size_t offset = static_cast<char*>(copy.data) - static_cast<char*>(copy.buffer.data());
  EXPECT_TRUE(copy.buffer.CopyToHost(host.data(), count * sizeof(T), offset).ok());
  return host;
}

// "" when equal, else where they first differ and how many bytes differ.
inline std::string CompareBytes(const void* expected, const void* actual, size_t size) {
  const auto* e = static_cast<const uint8_t*>(expected);
  const auto* a = static_cast<const uint8_t*>(actual);
  size_t first = size;
  size_t count = 0;
  for (size_t i = 0; i < size; ++i) {
    if (e[i] != a[i]) {
      if (first == size) first = i;
      ++count;
    }
  }
  if (count == 0) return "";
  return absl::StrCat(count, " of ", size, " bytes differ; first at byte ", first, ": expected 0x",
                      absl::Hex(e[first]), ", got 0x", absl::Hex(a[first]));
}

template <typename T>
std::string CompareBytes(const std::vector<T>& expected, const std::vector<T>& actual) {
  if (expected.size() != actual.size()) {
    return absl::StrCat("size ", expected.size(), " vs ", actual.size());
  }
  return CompareBytes(expected.data(), actual.data(), expected.size() * sizeof(T));
}

// Waits for the default stream, then CompareBytes of `expected` and the device bytes of `actual`.
inline std::string SyncAndCompare(const std::vector<uint8_t>& expected, const DeviceCopy& actual) {
  const absl::Status synced = SynchronizeStream(nullptr);
  if (!synced.ok()) return synced.ToString();
  return CompareBytes(expected, FromDevice<uint8_t>(actual, expected.size()));
}

inline const char* DtypeName(ScalarType type) {
  return type == ScalarType::kFloat32 ? "f32" : type == ScalarType::kFloat16 ? "f16" : "bf16";
}

inline constexpr ScalarType kFloatTypes[] = {ScalarType::kFloat32, ScalarType::kFloat16,
                                             ScalarType::kBFloat16};

}  // namespace kbitd::quant::cuda::testing
