// Vector primitives of the CPU backend, AVX-512 when the CPU has it (checked once at run time)
// with a portable fallback. The 4-bit dot product is fused: it reads packed codes and one scale
// per block and never materialises the dequantized row (bnb's gemv_4bit idea, csrc/kernels.cu
// kgemm_4bit_inference_naive, done with a 16-entry register LUT).
#pragma once

#include <cstdint>

namespace kbitd::runtime::cpu {

bool HasAvx512();

float Dot(const float* a, const float* b, int64_t n);
// y += a * x
void Axpy(float a, const float* x, float* y, int64_t n);

// Reorders x into the lane order in which Dot4bit expands each 8 bytes of packed codes (see
// ChunkElementOfLane in cpu_kernels.cc). n % 32 == 0.
void DeinterleaveForDot4bit(const float* x, int64_t n, float* out);

// sum_k code[q_k] * scale[k / blocksize] * x[k] over one row of n 4-bit codes (n/2 bytes),
// x prepared by DeinterleaveForDot4bit; n % blocksize == 0, blocksize % 32 == 0.
float Dot4bit(const uint8_t* packed, const float* scales, const float* code16,
              const float* x_deinterleaved, int64_t n, int64_t blocksize);

// Dequantizes one row (same preconditions) in natural order: out[k] = code[q_k] * scale.
void Dequantize4bitRow(const uint8_t* packed, const float* scales, const float* code16, int64_t n,
                       int64_t blocksize, float* out);

}  // namespace kbitd::runtime::cpu
