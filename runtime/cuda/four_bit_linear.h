// A fused 4-bit (NF4 / FP4 / any 16-entry code) linear for small batches: y = x · dequant(W)ᵀ
// straight from bitsandbytes' packed bytes, never writing the dequantized weight. Decode steps
// (M ≤ 16 rows of activations) are bound by reading the weight, so the kernel's job is to read
// 0.5 byte per weight at the memory's speed; dequantize + cuBLAS reads and writes 4.5 bytes
// instead.
//
// Layout: bitsandbytes' own (quant/blockwise_4bit.h): W [n, k] row-major flattened, two codes a
// byte (the lower index in the high nibble), one absmax per `blocksize` codes of the flat array,
// or the double-quantized absmax (a uint8 code per block into the dynamic map, times a float32
// nested absmax per 256 blocks, plus the offset) decoded in the kernel, as bitsandbytes'
// dequantize does, so double quant reads fewer bytes than plain NF4 instead of expanding at load.
// Public: no CUDA headers (`stream` is a cudaStream_t, pointers are device pointers).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kbitd::runtime::cuda {

struct FourBitLinearWeight {
  const uint8_t* packed = nullptr;  // [n * k / 2]
  int64_t n = 0;                    // out features
  int64_t k = 0;                    // in features
  int64_t blocksize = 0;            // codes per absmax, a power of two ≥ 64
  std::array<float, 16> code{};     // the 4-bit code book (bitsandbytes' NF4 or FP4 values)
  // Plain absmax: one float per block.
  const float* absmax = nullptr;
  // Double quant (when absmax is null): absmax[b] = nested_code[absmax_codes[b]] *
  // nested_absmax[b / 256] + nested_offset, in float32 with that rounding order.
  const uint8_t* absmax_codes = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;  // [256] on the device
  float nested_offset = 0;
};

// The largest batch the kernel takes; larger batches are compute-bound and go to cuBLAS.
inline constexpr int64_t kFourBitLinearMaxRows = 16;

// Whether the fused kernel handles this problem: m in [1, 16], n % 16 == 0, k % 64 == 0,
// blocksize a power of two ≥ 64, x/y in float16 or bfloat16 (y may also be float32).
bool FourBitLinearFits(int64_t m, const FourBitLinearWeight& w, ScalarType x_dtype,
                       ScalarType y_dtype);

// The kernel's launch shape: warps per block (they split k), 64-code chunks each warp keeps in
// flight, copies of the decode table in shared memory, and the blocks per multiprocessor the
// compiler must fit (a register cap; 1 = none). The defaults are what the backend uses;
// bench/gpu_linear compares the other compiled variants (W/U/C/B: 8/4/32/1, 8/2/32/1, 8/4/16/1,
// 8/4/32/3, 8/2/32/3, 8/2/16/4, 4/2/16/6).
struct FourBitLinearTuning {
  int warps = 8;
  int unroll = 4;
  int table_copies = 32;
  int min_blocks = 1;
};
// Every compiled launch shape, the default first (tests run them all).
const std::vector<FourBitLinearTuning>& FourBitLinearVariants();

// y[m, n] = y_dtype(Σ_k x[m, k] · code[q[n, k]] · absmax(n, k)): codes are rounded to x_dtype and
// multiplied on tensor cores with fp32 accumulation per 64 codes, each block's partial sum scaled
// by its absmax in fp32. x [m, k] row-major (16-byte aligned rows), y [m, n]. Errors: a problem
// that does not fit (see FourBitLinearFits) or a launch failure.
absl::Status LaunchFourBitLinear(const FourBitLinearWeight& w, const void* x, int64_t m,
                                 ScalarType x_dtype, void* y, ScalarType y_dtype, void* stream,
                                 const FourBitLinearTuning& tuning = {});

}  // namespace kbitd::runtime::cuda
