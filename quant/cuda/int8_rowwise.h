// LLM.int8() row-wise quantization on the GPU: the device-pointer twin of QuantizeRowwiseInt8 /
// DequantizeRowwiseInt8 / QuantizeActivationsInt8 in quant/int8_rowwise.h, byte-identical. Public:
// no CUDA headers; `stream` is a cudaStream_t (nullptr = default stream); work is queued, not
// waited for. All pointers are device pointers.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "quant/int8_rowwise.h"

namespace kbitd::quant::cuda {

// weight [rows, cols] of F32/F16/BF16, rounded to fp16 first (as bnb does); scb[r] = max_j |w16|;
// cb[r,j] = round_half_even(w16[r,j] * (127 / scb[r])) (0 for a zero row).
absl::Status QuantizeRowwiseInt8(const void* weight, ScalarType type, int64_t rows, int64_t cols,
                                 int8_t* cb, float* scb, void* stream);

// output[r,c] = output_type(f32(f32(cb[r,c] * scb[r]) * f32(1/127))).
absl::Status DequantizeRowwiseInt8(const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                                   ScalarType output_type, void* output, void* stream);

// x [m, k] of F32/F16/BF16, rounded to fp16 first. Writes ca [m, k], sca [m] and the outlier
// columns of QuantizeActivationsInt8: their count in num_outlier_cols[0] and, ascending, their
// indices in outlier_cols[0 .. count) (outlier_cols holds k entries; those past the count are
// scratch). threshold 0 disables the decomposition (count 0); threshold must be >= 0.
absl::Status QuantizeActivationsInt8(const void* x, ScalarType type, int64_t m, int64_t k,
                                     float threshold, int8_t* ca, float* sca, int64_t* outlier_cols,
                                     int64_t* num_outlier_cols, void* stream);

}  // namespace kbitd::quant::cuda
