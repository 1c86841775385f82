// Blockwise 4-bit quantization (NF4 / FP4) on the GPU: the device-pointer twin of
// quant/blockwise_4bit.h with byte-identical results (packed codes, absmax, dequantized values).
// Public: no CUDA headers. `stream` is a cudaStream_t (nullptr = the default stream); the work is
// queued on it and not waited for. All pointers are device pointers; any alignment works (16-byte
// aligned data takes the vectorized path).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "quant/blockwise_4bit.h"

namespace kbitd::quant::cuda {

// input: n elements of F32/F16/BF16. packed: Packed4bitBytes(n) bytes, element 2j in the high
// nibble of byte j. absmax: NumBlocks(n, blocksize) floats. blocksize: 32..4096, a power of two.
absl::Status Quantize4bit(FourBitType type, const void* input, ScalarType input_type, int64_t n,
                          int64_t blocksize, uint8_t* packed, float* absmax, void* stream);

// output[k] = output_type(f32(code_book[code(k)] * absmax[k / blocksize])).
absl::Status Dequantize4bit(FourBitType type, const uint8_t* packed, const float* absmax, int64_t n,
                            int64_t blocksize, ScalarType output_type, void* output, void* stream);

}  // namespace kbitd::quant::cuda
