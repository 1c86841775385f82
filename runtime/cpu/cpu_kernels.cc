#include "runtime/cpu/cpu_kernels.h"

#include <immintrin.h>

#include <cstring>

namespace kbitd::runtime::cpu {
namespace {

#define KBITD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// GCC 12's unmasked AVX-512 intrinsics pass an _mm512_undefined_*() value through as the masked-off
// lanes, which -Wall reports as used uninitialized (GCC PR 105593, fixed in GCC 13). With an
// all-ones mask the zero-masking forms compile to the same instructions and draw no warning.
constexpr __mmask8 kAll8 = 0xFF;
constexpr __mmask16 kAll16 = 0xFFFF;

// The sum of v's lanes in _mm512_reduce_add_ps's order (GCC's avx512fintrin.h: upper + lower 256
// bits, then 128, then pairs), so results are the same bits as before and under either compiler.
KBITD_AVX512 float ReduceAdd(__m512 v) {
  const __m512d vd = _mm512_castps_pd(v);
  const __m256 s8 = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(kAll8, vd, 1)),
                                  _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(kAll8, vd, 0)));
  const __m128 s4 = _mm_add_ps(_mm256_extractf128_ps(s8, 1), _mm256_castps256_ps128(s8));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));  // {s4[0] + s4[2], s4[1] + s4[3]}
  return _mm_cvtss_f32(s2) + _mm_cvtss_f32(_mm_shuffle_ps(s2, s2, 1));
}

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
  return ReduceAdd(_mm512_add_ps(acc0, acc1));
}

KBITD_AVX512 void AxpyAvx512(float a, const float* x, float* y, int64_t n) {
  __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(
        y + i, m,
        _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// Element of a 16-element (8-byte) chunk that lane L of Dot4bit's index vector holds. The chunk
// is read as one little-endian uint64 broadcast to 8 qword lanes, qword lane q shifted right by 4q:
// its low dword then starts with nibble q and its high dword with nibble q + 8, and vpermps looks
// up only the low 4 bits of each dword. Nibble i is the low half of byte i/2 for even i, which
// bitsandbytes packs as the odd element (element 2j sits in the high nibble of byte j): i ^ 1.
constexpr int ChunkElementOfLane(int lane) {
  return ((lane % 2 == 0) ? lane / 2 : lane / 2 + 8) ^ 1;
}

// Per 16 codes: one broadcast load, one variable shift and one vpermps. Shuffles are what limits
// this loop (bench/cpu_decode); the broadcast+shift form needs one shuffle where zero-extending
// the bytes (vpmovzxbd) and masking needed two.
KBITD_AVX512 float Dot4bitAvx512(const uint8_t* packed, const float* scales, const float* code16,
                                 const float* xd, int64_t n, int64_t blocksize) {
  const __m512 lut = _mm512_loadu_ps(code16);
  const __m512i shifts = _mm512_set_epi64(28, 24, 20, 16, 12, 8, 4, 0);
  __m512 total0 = _mm512_setzero_ps(), total1 = _mm512_setzero_ps();
  const int64_t nblocks = n / blocksize;
  for (int64_t b = 0; b < nblocks; ++b) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const uint8_t* p = packed + b * blocksize / 2;
    const float* x = xd + b * blocksize;
    for (int64_t j = 0; j < blocksize; j += 32) {
      uint64_t q0, q1;
      std::memcpy(&q0, p + j / 2, 8);
      std::memcpy(&q1, p + j / 2 + 8, 8);
      const __m512i i0 =
          _mm512_maskz_srlv_epi64(kAll8, _mm512_set1_epi64(static_cast<int64_t>(q0)), shifts);
      const __m512i i1 =
          _mm512_maskz_srlv_epi64(kAll8, _mm512_set1_epi64(static_cast<int64_t>(q1)), shifts);
      acc0 = _mm512_fmadd_ps(_mm512_maskz_permutexvar_ps(kAll16, i0, lut), _mm512_loadu_ps(x + j),
                             acc0);
      acc1 = _mm512_fmadd_ps(_mm512_maskz_permutexvar_ps(kAll16, i1, lut),
                             _mm512_loadu_ps(x + j + 16), acc1);
    }
    __m512 s = _mm512_set1_ps(scales[b]);
    total0 = _mm512_fmadd_ps(acc0, s, total0);
    total1 = _mm512_fmadd_ps(acc1, s, total1);
  }
  return ReduceAdd(_mm512_add_ps(total0, total1));
}

float Dot4bitScalar(const uint8_t* packed, const float* scales, const float* code16,
                    const float* xd, int64_t n, int64_t blocksize) {
  float total = 0;
  for (int64_t b = 0; b < n / blocksize; ++b) {
    float acc = 0;
    for (int64_t c = b * blocksize; c < (b + 1) * blocksize; c += 16) {
      for (int lane = 0; lane < 16; ++lane) {
        const int64_t element = c + ChunkElementOfLane(lane);
        const uint8_t byte = packed[element / 2];
        acc += code16[element % 2 == 0 ? byte >> 4 : byte & 0xF] * xd[c + lane];
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
  for (int64_t c = 0; c < n; c += 16) {
    for (int lane = 0; lane < 16; ++lane) out[c + lane] = x[c + ChunkElementOfLane(lane)];
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
