// Blockwise 8-bit quantization with a 256-entry code (bnb quantize_blockwise /
// dequantize_blockwise) on the GPU: the device-pointer twin of quant/blockwise_8bit.h with
// byte-identical results. Public: no CUDA headers; `stream` is a cudaStream_t (nullptr = default
// stream), work is queued and not waited for. All pointers, code256 included, are device pointers.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "quant/blockwise_8bit.h"

namespace kbitd::quant::cuda {

// codes[k] = EncodeDynamic8bit(code256, x[k] * (1/absmax[block])); code256 ascending (256 floats).
// blocksize: 64..4096, a power of two.
absl::Status QuantizeBlockwise8bit(const float* code256, const void* input, ScalarType input_type,
                                   int64_t n, int64_t blocksize, uint8_t* codes, float* absmax,
                                   void* stream);

// output[k] = output_type(f32(code256[codes[k]] * absmax[k / blocksize])).
absl::Status DequantizeBlockwise8bit(const float* code256, const uint8_t* codes,
                                     const float* absmax, int64_t n, int64_t blocksize,
                                     ScalarType output_type, void* output, void* stream);

}  // namespace kbitd::quant::cuda
