// Small device helpers for the quant CUDA kernels, their tests and benchmarks: is there a GPU, an
// owning device buffer, stream synchronization. Public: no CUDA headers (streams are void*).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kbitd::quant::cuda {

// Number of usable CUDA devices; 0 when there is no GPU or no driver (that is not an error here).
int DeviceCount();

// Waits for all work queued on `stream` (nullptr = the legacy default stream) and reports any
// asynchronous kernel error.
absl::Status SynchronizeStream(void* stream);

// Owns one cudaMalloc allocation. Move-only; frees on destruction. The copies are synchronous.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  // Copies `bytes` from host `src` to the buffer at byte `offset`.
  absl::Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  // Copies `bytes` from the buffer at byte `offset` to host `dst`.
  absl::Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  // Sets every byte to `value` (tests poison outputs with it before a kernel runs).
  absl::Status Fill(uint8_t value);

 private:
  DeviceBuffer(void* data, size_t size) : data_(data), size_(size) {}
  absl::Status CheckRange(size_t bytes, size_t offset, const char* what) const;

  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kbitd::quant::cuda
