// Blockwise 4-bit quantization (NF4 / FP4) in the format of bitsandbytes quantize_4bit /
// dequantize_4bit (bnb-spec §2): dequantization bit for bit; quantization gives bnb's codes except
// at exact rounding ties, where bnb's fast-math reciprocal rounds differently (quant/encode.h,
// docs/quantization.md). NF4 and FP4 are one templated path differing only in the code
// book. Element k is the k-th element of the row-major flattening; blocks never look at the shape.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace kbitd::quant {

enum class FourBitType : uint8_t { kNf4, kFp4 };

// "nf4" / "fp4" (bitsandbytes quant_type names).
absl::StatusOr<FourBitType> FourBitTypeFromName(std::string_view name);
std::string_view FourBitTypeName(FourBitType type);

// 32, 64, ..., 4096 (powers of two; 32 since bnb 0.49).
absl::Status Validate4bitBlocksize(int64_t blocksize);

// ceil(n / blocksize).
inline int64_t NumBlocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }
// (n + 1) / 2: two codes per byte.
inline int64_t Packed4bitBytes(int64_t n) { return (n + 1) / 2; }

// input: n elements of F32/F16/BF16. packed: Packed4bitBytes(n) bytes, element 2j in the HIGH
// nibble of byte j (an odd n pads the last low nibble with the code of 0.0). absmax:
// NumBlocks(n, blocksize) floats, max |x| per block (NaN ignored; Inf propagates).
absl::Status Quantize4bit(FourBitType type, const void* input, ScalarType input_type, int64_t n,
                          int64_t blocksize, uint8_t* packed, float* absmax);

// output[k] = output_type(f32(code_book[code(k)] * absmax[k / blocksize])), one RNE rounding.
// Uses the built-in code book of `type` (bnb ignores the stored quant_map here too).
absl::Status Dequantize4bit(FourBitType type, const uint8_t* packed, const float* absmax, int64_t n,
                            int64_t blocksize, ScalarType output_type, void* output);

}  // namespace kbitd::quant
