// Startup / test self-check of the encoders the GPU kernels use (the shared-memory comparison trees
// of quant/cuda/encode_tree.cuh, and the branch-free forms of encode_select.cuh) against the shared
// reference encoders of quant/encode.h, over all 2^32 float bit patterns (well under a second on an
// H100). Public: no CUDA headers.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace kbitd::quant::cuda {

struct EncoderMismatches {
  uint64_t nf4 = 0;         // EncodeNf4Tree vs EncodeNf4
  uint64_t fp4 = 0;         // EncodeFp4Tree vs EncodeFp4
  uint64_t dynamic8 = 0;    // EncodeDynamic8bitRank vs EncodeDynamic8bit with `code256`
  uint64_t nf4_select = 0;  // EncodeNf4Select vs EncodeNf4
  uint64_t fp4_select = 0;  // EncodeFp4Select vs EncodeFp4
};

// Counts the inputs on which the device encoders differ from the reference. code256: a 256-entry
// ascending map in device memory (e.g. DynamicMap()). Synchronizes `stream`.
absl::StatusOr<EncoderMismatches> CountEncoderMismatches(const float* code256, void* stream);

}  // namespace kbitd::quant::cuda
