// Blockwise 8-bit quantization with a 256-entry code (bnb quantize_blockwise / dequantize_blockwise
// with the signed dynamic map; bnb-spec §3.2). Also the inner step of double quantization.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kbitd::quant {

// 64 ... 4096 (powers of two), the sizes bnb's CUDA kernels accept.
absl::Status Validate8bitBlocksize(int64_t blocksize);

// codes[k] = EncodeDynamic8bit(code256, x[k] * (1/absmax[block])); absmax as in Quantize4bit.
// code256 must be ascending (bnb's binary search assumes it).
absl::Status QuantizeBlockwise8bit(const float* code256, const void* input, ScalarType input_type,
                                   int64_t n, int64_t blocksize, uint8_t* codes, float* absmax);

// output[k] = output_type(f32(code256[codes[k]] * absmax[k / blocksize])).
absl::Status DequantizeBlockwise8bit(const float* code256, const uint8_t* codes,
                                     const float* absmax, int64_t n, int64_t blocksize,
                                     ScalarType output_type, void* output);

}  // namespace kbitd::quant
