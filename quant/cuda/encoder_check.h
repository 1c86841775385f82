// Startup / test self-check of the GPU's branch-free 4-bit encoders (quant/cuda/encode_select.cuh)
// against the shared reference encoders of quant/encode.h, over all 2^32 float bit patterns (a few
// milliseconds on an H100). Public: no CUDA headers.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace kbitd::quant::cuda {

struct EncoderMismatches {
  uint64_t nf4 = 0;
  uint64_t fp4 = 0;
};

// Counts the inputs on which the device encoders differ from the reference; synchronizes `stream`.
absl::StatusOr<EncoderMismatches> CountEncoderMismatches(void* stream);

}  // namespace kbitd::quant::cuda
