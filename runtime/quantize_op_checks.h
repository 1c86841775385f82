// Argument checks of the Backend's quantize-on-load ops (runtime/backend.h), shared by every
// backend so that each refuses the same things with the same messages: INVALID_ARGUMENT naming
// the op and the tensor when a shape, dtype or device does not fit.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/device.h"
#include "runtime/tensor.h"

namespace kbitd::runtime {

absl::Status CheckQuantize4bitArgs(const Device& device, const Tensor& dense, int64_t blocksize,
                                   const Tensor& packed, const Tensor& absmax);
absl::Status CheckDoubleQuantizeArgs(const Device& device, const Tensor& absmax,
                                     const Tensor& codes, const Tensor& nested_absmax,
                                     const Tensor& offset);
absl::Status CheckRowwiseInt8Args(const Device& device, const Tensor& dense, const Tensor& cb,
                                  const Tensor& scb);

}  // namespace kbitd::runtime
