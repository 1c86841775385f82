// Helpers shared by the state-dict readers and writers of quant/ (quant_state.cc: bitsandbytes,
// gptq_state.cc: GPTQ): typed copies in and out of NamedTensor bytes and strict dtype/shape checks
// whose messages name the tensor.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/quant_state.h"

namespace kbitd::quant::internal {

template <typename T>
NamedTensor MakeTensor(std::string name, ScalarType dtype, std::vector<int64_t> shape,
                       const std::vector<T>& values) {
  NamedTensor t{std::move(name), dtype, std::move(shape),
                std::vector<uint8_t>(values.size() * sizeof(T))};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

template <typename T>
std::vector<T> Values(const NamedTensor& t) {
  std::vector<T> out(t.bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), t.bytes.data(), out.size() * sizeof(T));
  return out;
}

inline int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// Checks dtype and shape of a tensor against what the format writes, and that its bytes fill it.
inline absl::Status Expect(const NamedTensor& t, ScalarType dtype,
                           const std::vector<int64_t>& shape) {
  if (t.dtype != dtype || t.shape != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", t.name, ": expected ", std::string(SafetensorsDtypeName(dtype)),
                     " ", ShapeString(shape), ", got ", std::string(SafetensorsDtypeName(t.dtype)),
                     " ", ShapeString(t.shape)));
  }
  if (static_cast<int64_t>(t.bytes.size()) !=
      Numel(shape) * static_cast<int64_t>(ScalarTypeSize(dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", t.name, ": ", t.bytes.size(), " bytes do not match its shape"));
  }
  return absl::OkStatus();
}

// DequantizeState of a kGptq state (gptq_state.cc).
absl::Status DequantizeGptqState(const QuantState& state, ScalarType output_type, void* output);

}  // namespace kbitd::quant::internal
