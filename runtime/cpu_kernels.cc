#include "runtime/cpu_kernels.h"

#include <immintrin.h>

namespace kbitd::runtime::cpu {
namespace {

#define KBITD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

KBITD_AVX512 float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

KBITD_AVX512 void AxpyAvx512(float a, const float* x, float* y, int64_t n) {
  __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i),
                                          _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// 16 bytes = 32 codes per step: the high nibbles pair with the 16 even x, the low with the odd.
KBITD_AVX512 float Dot4bitAvx512(const uint8_t* packed, const float* scales, const float* code16,
                                 const float* xd, int64_t n, int64_t blocksize) {
  const __m512 lut = _mm512_loadu_ps(code16);
  const __m512i low_mask = _mm512_set1_epi32(0xF);
  __m512 total0 = _mm512_setzero_ps(), total1 = _mm512_setzero_ps();
  const int64_t nblocks = n / blocksize;
  for (int64_t b = 0; b < nblocks; ++b) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const uint8_t* p = packed + b * blocksize / 2;
    const float* x = xd + b * blocksize;
    for (int64_t j = 0; j < blocksize; j += 32) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j / 2)));
      __m512 whi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
      __m512 wlo = _mm512_permutexvar_ps(_mm512_and_si512(v, low_mask), lut);
      acc0 = _mm512_fmadd_ps(whi, _mm512_loadu_ps(x + j), acc0);
      acc1 = _mm512_fmadd_ps(wlo, _mm512_loadu_ps(x + j + 16), acc1);
    }
    __m512 s = _mm512_set1_ps(scales[b]);
    total0 = _mm512_fmadd_ps(acc0, s, total0);
    total1 = _mm512_fmadd_ps(acc1, s, total1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(total0, total1));
}

float Dot4bitScalar(const uint8_t* packed, const float* scales, const float* code16,
                    const float* xd, int64_t n, int64_t blocksize) {
  float total = 0;
  for (int64_t b = 0; b < n / blocksize; ++b) {
    float acc = 0;
    const uint8_t* p = packed + b * blocksize / 2;
    const float* x = xd + b * blocksize;
    for (int64_t j = 0; j < blocksize; j += 32) {
      for (int i = 0; i < 16; ++i) {
        uint8_t byte = p[j / 2 + i];
        acc += code16[byte >> 4] * x[j + i] + code16[byte & 0xF] * x[j + 16 + i];
      }
    }
    total += acc * scales[b];
  }
  return total;
}

const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");

}  // namespace

bool HasAvx512() { return kHasAvx512; }

float Dot(const float* a, const float* b, int64_t n) {
  if (kHasAvx512) return DotAvx512(a, b, n);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float total = 0;
  for (; i < n; ++i) total += a[i] * b[i];
  for (float v : acc) total += v;
  return total;
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  if (kHasAvx512) return AxpyAvx512(a, x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void DeinterleaveForDot4bit(const float* x, int64_t n, float* out) {
  for (int64_t c = 0; c < n; c += 32) {
    for (int i = 0; i < 16; ++i) {
      out[c + i] = x[c + 2 * i];
      out[c + 16 + i] = x[c + 2 * i + 1];
    }
  }
}

float Dot4bit(const uint8_t* packed, const float* scales, const float* code16,
              const float* x_deinterleaved, int64_t n, int64_t blocksize) {
  if (kHasAvx512) return Dot4bitAvx512(packed, scales, code16, x_deinterleaved, n, blocksize);
  return Dot4bitScalar(packed, scales, code16, x_deinterleaved, n, blocksize);
}

void Dequantize4bitRow(const uint8_t* packed, const float* scales, const float* code16, int64_t n,
                       int64_t blocksize, float* out) {
  for (int64_t k = 0; k < n; k += 2) {
    uint8_t byte = packed[k / 2];
    float s = scales[k / blocksize];
    out[k] = code16[byte >> 4] * s;
    out[k + 1] = code16[byte & 0xF] * s;
  }
}

}  // namespace kbitd::runtime::cpu
