// LLM.int8() (bnb-spec §6): row-wise int8 weights (Int8Params / int8_vectorwise_quant), activation
// quantization with outlier columns, and the MatMul8bitLt inference forward
// (int8 matmul + int8_mm_dequant + outlier correction with dequantized int8 weight columns).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace kbitd::quant {

// weight [rows, cols] of F32/F16/BF16 is first rounded to fp16 (as bnb does, even for bf16);
// scb[r] = max_j |w16[r,j]|; cb[r,j] = round_half_even(w16[r,j] * (127 / scb[r])) (0 for a zero
// row).
absl::Status QuantizeRowwiseInt8(const void* weight, ScalarType type, int64_t rows, int64_t cols,
                                 int8_t* cb, float* scb);

// output[r,c] = output_type(f32(f32(cb[r,c] * scb[r]) * f32(1/127))) (bnb int8_vectorwise_dequant).
absl::Status DequantizeRowwiseInt8(const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                                   ScalarType output_type, void* output);

struct Int8Activations {
  std::vector<int8_t> ca;             // [m, k]; outlier elements (and, when m > 1, whole outlier
                                      // columns) are 0
  std::vector<float> sca;             // [m] row absmax over the non-outlier elements
  std::vector<int64_t> outlier_cols;  // ascending; empty when threshold == 0
};

// x [m, k] (rounded to fp16 first). threshold > 0 enables the outlier decomposition: a column is an
// outlier column if any |x16| >= threshold in it. threshold must be >= 0.
absl::StatusOr<Int8Activations> QuantizeActivationsInt8(const void* x, ScalarType type, int64_t m,
                                                        int64_t k, float threshold);

// bnb int8_scaled_mm (int8_linear_matmul + int8_mm_dequant), no outlier part:
// y[r,o] = out_type(fp16(fmaf((C[r,o] * sca[r]) * scb[o], f32(1/127^2), bias_fp16[o]))) with the
// exact int32 C = ca[r,:] . cb[o,:]; a bias that is not fp16 is added to the fp16 result (rounded
// to fp16) instead of being fused. bias (nullable) has out_type. Exposed so that tests can feed
// bnb's own codes.
absl::Status Int8MatmulDequant(const int8_t* ca, const float* sca, int64_t m, int64_t k,
                               const int8_t* cb, const float* scb, int64_t n, const void* bias,
                               ScalarType out_type, void* y);

// y[m,n] = bnb MatMul8bitLt inference result incl. outlier decomposition, in x's dtype.
// cb [n, k] int8, scb [n]; bias (nullable) has x's dtype.
absl::Status Int8Linear(const void* x, ScalarType x_type, int64_t m, int64_t k, const int8_t* cb,
                        const float* scb, int64_t n, const void* bias /*nullable, x_type*/,
                        float threshold, void* y);

}  // namespace kbitd::quant
