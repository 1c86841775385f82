// Host data onto a backend's device and back, through the backend's own CopyTo, so that a test
// drives any backend (CPU or GPU) as the forward pass does: every tensor an op sees is on the
// backend's device, allocated from that device's pool. Failures are reported to the running test
// (ADD_FAILURE) and leave an undefined tensor or NaN values, which the next op or comparison then
// rejects, so a broken upload fails the test instead of crashing it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "runtime/backend.h"
#include "runtime/memory_pool.h"
#include "runtime/tensor.h"

namespace kbitd::test {

// Values as they are after a round trip through `dtype` (float32/float16/bfloat16): what a
// reference must compute with once the inputs are stored in that dtype.
inline std::vector<float> RoundedTo(const std::vector<float>& values, ScalarType dtype) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits = 0;
    StoreFromFloat(&bits, dtype, 0, values[i]);
    out[i] = LoadAsFloat(&bits, dtype, 0);
  }
  return out;
}

// float32 values stored as `dtype` (float32/float16/bfloat16), as raw bytes.
inline std::vector<uint8_t> EncodeFloats(const std::vector<float>& values, ScalarType dtype) {
  std::vector<uint8_t> bytes(values.size() * ScalarTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) StoreFromFloat(bytes.data(), dtype, i, values[i]);
  return bytes;
}

// Owns the device buffers of one test. Not thread-safe.
class DeviceTensors {
 public:
  DeviceTensors(runtime::Backend& backend, runtime::MemoryPool& pool)
      : backend_(backend), pool_(pool) {}

  // A tensor on the device with unspecified contents (device memory is not zeroed everywhere).
  runtime::Tensor Empty(ScalarType dtype, std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    const size_t bytes = static_cast<size_t>(n) * ScalarTypeSize(dtype);
    // One byte at least, so that a tensor of zero elements still has data (a defined tensor).
    absl::StatusOr<runtime::Buffer> buffer =
        pool_.Allocate(bytes > 0 ? bytes : 1, runtime::MemoryCategory::kWorkspace, "backend_test");
    if (!buffer.ok()) {
      ADD_FAILURE() << "allocating " << bytes << " bytes: " << buffer.status();
      return runtime::Tensor();
    }
    buffers_.push_back(*std::move(buffer));
    return buffers_.back().View(dtype, dims);
  }

  // A device tensor holding `bytes` (raw elements of `dtype`).
  runtime::Tensor Upload(const void* bytes, ScalarType dtype, std::initializer_list<int64_t> dims) {
    runtime::Tensor dst = Empty(dtype, dims);
    if (!dst.defined()) return dst;
    runtime::Tensor src = dst;
    src.data = const_cast<void*>(bytes);
    src.device = runtime::Device::Cpu();
    Check(backend_.CopyTo(src, dst), "upload");
    // The host data may be a temporary of the caller: the copy must be complete before it goes.
    Check(backend_.Synchronize(), "upload");
    return dst;
  }

  // float32 values stored on the device as `dtype` (rounded to nearest even).
  runtime::Tensor Floats(const std::vector<float>& values, ScalarType dtype,
                         std::initializer_list<int64_t> dims) {
    const std::vector<uint8_t> bytes = EncodeFloats(values, dtype);
    return Upload(bytes.data(), dtype, dims);
  }

  runtime::Tensor Ints(const std::vector<int32_t>& values, std::initializer_list<int64_t> dims) {
    return Upload(values.data(), ScalarType::kInt32, dims);
  }

  // The raw bytes of a device tensor.
  std::vector<uint8_t> DownloadBytes(const runtime::Tensor& src) {
    std::vector<uint8_t> bytes(static_cast<size_t>(src.numel()) * ScalarTypeSize(src.dtype));
    runtime::Tensor dst = src;
    dst.data = bytes.data();
    dst.device = runtime::Device::Cpu();
    if (!Check(backend_.CopyTo(src, dst), "download") ||
        !Check(backend_.Synchronize(), "download")) {
      bytes.clear();
    }
    return bytes;
  }

  // A float32/float16/bfloat16 device tensor as float32 values (NaN where the copy failed).
  std::vector<float> DownloadFloats(const runtime::Tensor& src) {
    const std::vector<uint8_t> bytes = DownloadBytes(src);
    std::vector<float> out(static_cast<size_t>(src.numel()),
                           std::numeric_limits<float>::quiet_NaN());
    if (bytes.empty()) return out;
    for (size_t i = 0; i < out.size(); ++i) out[i] = LoadAsFloat(bytes.data(), src.dtype, i);
    return out;
  }

 private:
  bool Check(const absl::Status& status, const char* what) {
    if (status.ok()) return true;
    ADD_FAILURE() << what << ": " << status;
    return false;
  }

  runtime::Backend& backend_;
  runtime::MemoryPool& pool_;
  std::vector<runtime::Buffer> buffers_;
};

}  // namespace kbitd::test
