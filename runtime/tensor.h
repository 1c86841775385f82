// A non-owning view of a dense tensor: dtype, shape, row-major strides, device and pointer.
// Ownership lives in runtime::Buffer (memory_pool.h), which hands out views of itself
// (Buffer::View). Up to 4 dimensions. A default-constructed Tensor is "undefined" (no data): an
// optional input such as a missing bias.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>

#include "common/dtype.h"
#include "runtime/device.h"

namespace kbitd::runtime {

struct Tensor {
  void* data = nullptr;
  ScalarType dtype = ScalarType::kFloat32;
  int rank = 0;
  std::array<int64_t, 4> shape{};
  std::array<int64_t, 4> strides{};  // in elements
  Device device;

  static Tensor Make(void* data, ScalarType dtype, std::initializer_list<int64_t> dims,
                     Device device = Device::Cpu()) {
    Tensor t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    for (int64_t d : dims) t.shape[t.rank++] = d;
    int64_t stride = 1;
    for (int i = t.rank - 1; i >= 0; --i) {
      t.strides[i] = stride;
      stride *= t.shape[i];
    }
    return t;
  }
  // A host tensor over memory the caller owns (host vectors of a step, test data).
  static Tensor Host(const void* data, ScalarType dtype, std::initializer_list<int64_t> dims) {
    return Make(const_cast<void*>(data), dtype, dims);
  }
  static Tensor F32(float* data, std::initializer_list<int64_t> dims) {
    return Make(data, ScalarType::kFloat32, dims);
  }

  bool defined() const { return data != nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  int64_t bytes() const {
    return defined() ? numel() * static_cast<int64_t>(ScalarTypeSize(dtype)) : 0;
  }
  int64_t dim(int i) const { return shape[i]; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  float* f32() const { return static_cast<float*>(data); }
  // Row r of a 2-D float32 tensor.
  float* row(int64_t r) const { return f32() + r * strides[0]; }
};

}  // namespace kbitd::runtime
