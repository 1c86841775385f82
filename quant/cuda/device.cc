#include "quant/cuda/device.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "quant/cuda/cuda_check.h"

namespace kbitd::quant::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) "no device" error
    return 0;
  }
  return count;
}

absl::Status SynchronizeStream(void* stream) {
  KBITD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(AsCudaStream(stream)));
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  void* data = nullptr;
  if (bytes > 0) {
    KBITD_RETURN_IF_ERROR(
        CudaStatus(cudaMalloc(&data, bytes), absl::StrCat("cudaMalloc of ", bytes, " bytes")));
  }
  return DeviceBuffer(data, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

absl::Status DeviceBuffer::CheckRange(size_t bytes, size_t offset, const char* what) const {
  if (offset <= size_ && bytes <= size_ - offset) return absl::OkStatus();
  return absl::OutOfRangeError(absl::StrCat(what, ": ", bytes, " bytes at offset ", offset,
                                            " exceed the device buffer of ", size_, " bytes"));
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  KBITD_RETURN_IF_ERROR(CheckRange(bytes, offset, "copy to device"));
  if (bytes == 0) return absl::OkStatus();
  KBITD_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(static_cast<char*>(data_) + offset, src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  KBITD_RETURN_IF_ERROR(CheckRange(bytes, offset, "copy to host"));
  if (bytes == 0) return absl::OkStatus();
  KBITD_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Fill(uint8_t value) {
  if (size_ == 0) return absl::OkStatus();
  KBITD_CUDA_RETURN_IF_ERROR(cudaMemset(data_, value, size_));
  return absl::OkStatus();
}

}  // namespace kbitd::quant::cuda
