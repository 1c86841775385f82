// LLM.int8() matmul on the GPU: the device-pointer twins of Int8MatmulDequant and Int8Linear in
// quant/int8_rowwise.h, byte-identical to them. Public: no CUDA headers; `stream` is a
// cudaStream_t (nullptr = default stream); work is queued, not waited for. All pointers are device
// pointers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kbitd::quant::cuda {

// y[r,o] = out_type(fp16(fmaf((C[r,o] * sca[r]) * scb[o], f32(1/127^2), bias_fp16[o]))) with the
// exact int32 C = ca[r,:] . cb[o,:] (ca [m, k], cb [n, k]); a bias (nullable, out_type) that is not
// fp16 is added to the fp16 result and rounded to fp16 again.
absl::Status Int8MatmulDequant(const int8_t* ca, const float* sca, int64_t m, int64_t k,
                               const int8_t* cb, const float* scb, int64_t n, const void* bias,
                               ScalarType out_type, void* y, void* stream);

// Device scratch bytes Int8Linear needs for x [m, k]: the activation codes, SCA and outlier list.
size_t Int8LinearWorkspaceBytes(int64_t m, int64_t k);

// y [m, n] (x_type) = bnb MatMul8bitLt inference forward with the outlier decomposition, as the CPU
// Int8Linear: x [m, k], cb [n, k], scb [n], bias (nullable) of x_type, threshold >= 0.
// `workspace` holds Int8LinearWorkspaceBytes(m, k) bytes, 16-byte aligned.
absl::Status Int8Linear(const void* x, ScalarType x_type, int64_t m, int64_t k, const int8_t* cb,
                        const float* scb, int64_t n, const void* bias, float threshold,
                        void* workspace, void* y, void* stream);

}  // namespace kbitd::quant::cuda
