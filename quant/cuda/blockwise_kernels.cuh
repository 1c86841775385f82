// Internal to quant/cuda: the blockwise quantize / dequantize kernels behind the 4-bit (NF4, FP4)
// and 8-bit (dynamic map) APIs. One templated path: the codec (encoder + bits per code) is the only
// difference, as in bitsandbytes csrc/kernels.cu kQuantizeBlockwise / kDequantizeBlockwise.
//
// Bytes match the CPU reference (quant/blockwise_4bit.cc, blockwise_8bit.cc) because every
// per-element decision uses the shared encoders of quant/encode.h, the reciprocal is IEEE
// (ReciprocalAbsmax), products are __fmul_rn / sums __fadd_rn (never contracted into FMA), and the
// absmax is an fmaxf reduction, which gives the same result in any order (NaN is ignored).
#pragma once

#include <cuda_runtime_api.h>

#include <cfloat>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/codebooks.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/elements.cuh"
#include "quant/cuda/encode_tree.cuh"
#include "quant/encode.h"

namespace kbitd::quant::cuda::internal {

// A CTA of kThreads threads handles tiles of kTile consecutive elements, kEpt per thread (16: two
// 16-byte loads of bf16/fp16, four of fp32). Every blocksize (32..4096) is a multiple of kEpt and
// divides kTile, so a thread's elements lie in one quantization block (and a block of at most
// kWarpChunk elements in one warp of a tile).
inline constexpr int kThreads = 256;
inline constexpr int kEpt = 16;
inline constexpr int kTile = kThreads * kEpt;

// What a codec keeps in shared memory: nothing, a 15- or 7-threshold tree (QuantizeParams::tree)
// or the rank table of a 256-entry map (QuantizeParams::table, see LoadMapRanks).
enum class CodecTable { kNone, kTree16, kMap };

// The codecs the API uses: shared-memory comparison trees (encode_tree.cuh).
struct Nf4Codec {
  static constexpr int kBits = 4;
  static constexpr CodecTable kTable = CodecTable::kTree16;
  static Lut16 HostTree() { return EytzingerTree(kNf4ThresholdBits.data(), 4); }
  __device__ static uint8_t Encode(const float* tree, float x) { return EncodeNf4Tree(tree, x); }
};

struct Fp4Codec {
  static constexpr int kBits = 4;
  static constexpr CodecTable kTable = CodecTable::kTree16;
  static Lut16 HostTree() { return EytzingerTree(kFp4ThresholdBits.data(), 3); }
  __device__ static uint8_t Encode(const float* tree, float x) { return EncodeFp4Tree(tree, x); }
};

// 8-bit with a 256-entry ascending map (bnb dQuantize<0>), encoded by rank (encode_tree.cuh:
// MapRankTable). On an H100 walking bnb's search tree instead (8 dependent shared loads per
// element) held 8192² bf16 quantization to 256 µs, 1.41x bitsandbytes.
inline constexpr int kMapRankTableFloats = sizeof(MapRankTable) / sizeof(float);
static_assert(sizeof(MapRankTable) % sizeof(float) == 0);

struct Dynamic8Codec {
  static constexpr int kBits = 8;
  static constexpr CodecTable kTable = CodecTable::kMap;
  static Lut16 HostTree() { return {}; }
  __device__ static uint8_t Encode(const float* table, float x) {
    return EncodeDynamic8bitRank(*reinterpret_cast<const MapRankTable*>(table), x);
  }
};

// Max over aligned groups of `group` consecutive threads of one warp (a power of two, 1..32);
// every thread gets its group's max. Blocks bigger than a warp's elements (kWarpChunk) are
// quantized by QuantizeLargeBlocksKernel, so no group spans warps.
__device__ __forceinline__ float GroupMax(float v, int group) {
  for (int offset = group / 2; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  }
  return v;
}

struct QuantizeParams {
  const void* input;  // n elements of the In type
  int64_t n;
  int log2_blocksize;
  uint8_t* codes;         // packed 4-bit (high nibble first) or one byte per element
  float* absmax;          // NumBlocks(n, blocksize)
  const float* table;     // 256-entry map in device memory (8-bit codec), else null
  Lut16 tree;             // threshold tree of a kTree16 codec (Codec::HostTree())
  const float* subtract;  // device scalar subtracted from every element first (double quant)
  bool vectorized;        // input 16-byte aligned, codes 8- (4-bit) or 16-byte (8-bit) aligned
};

// Loads the thread's kEpt elements starting at e0 as float; elements at or past n read as 0.0
// (the kernel's padding: it takes part in the absmax and, for odd n, fills the last low nibble).
template <typename In>
__device__ __forceinline__ void LoadElements(const typename In::Storage* input, int64_t e0,
                                             int64_t n, bool full, float (&x)[kEpt]) {
  if (full) {
    Vec<typename In::Storage, kEpt> v;
    LoadVec(input + e0, v);
#pragma unroll
    for (int i = 0; i < kEpt; ++i) x[i] = In::Load(v.e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kEpt; ++i) x[i] = (e0 + i < n) ? In::Load(input[e0 + i]) : 0.0f;
  }
}

template <int kBits>
__device__ __forceinline__ void StoreCodes(uint8_t* codes, int64_t e0, int64_t n, bool full,
                                           const uint8_t (&q)[kEpt]) {
  if constexpr (kBits == 4) {
    union {
      uint2 v;
      uint8_t b[kEpt / 2];
    } packed;
#pragma unroll
    for (int j = 0; j < kEpt / 2; ++j)
      packed.b[j] = static_cast<uint8_t>((q[2 * j] << 4) | q[2 * j + 1]);
    if (full) {
      __stcs(reinterpret_cast<uint2*>(codes + e0 / 2), packed.v);
    } else {
      const int64_t bytes = (n + 1) / 2;
#pragma unroll
      for (int j = 0; j < kEpt / 2; ++j) {
        if (e0 / 2 + j < bytes) codes[e0 / 2 + j] = packed.b[j];
      }
    }
  } else {
    union {
      uint4 v;
      uint8_t b[kEpt];
    } bytes;
#pragma unroll
    for (int i = 0; i < kEpt; ++i) bytes.b[i] = q[i];
    if (full) {
      __stcs(reinterpret_cast<uint4*>(codes + e0), bytes.v);
    } else {
#pragma unroll
      for (int i = 0; i < kEpt; ++i) {
        if (e0 + i < n) codes[e0 + i] = bytes.b[i];
      }
    }
  }
}

// Blocks larger than a warp's elements (kWarpChunk, e.g. 8-bit's default 4096) are quantized by
// QuantizeLargeBlocksKernel; smaller ones by QuantizeBlockwiseKernel, where a block's threads are
// lanes of one warp.
inline constexpr int kWarpChunk = 32 * kEpt;
// 32 warps per large-block CTA: the shared tables are built once per CTA, so bigger CTAs build them
// less often (at 4096x4096 with 8-warp CTAs the 8-bit table build was a third of the kernel's
// instructions).
inline constexpr int kLargeThreads = 1024;
static_assert(kThreads >= 256 && kLargeThreads >= 256, "LoadMapRanks needs 256 threads");

// The codec's shared-memory table (see CodecTable); called by every thread, then a barrier.
template <typename Codec>
__device__ __forceinline__ void LoadCodecTable(const QuantizeParams& p, float* table) {
  if constexpr (Codec::kTable == CodecTable::kMap) {
    LoadMapRanks(p.table, reinterpret_cast<MapRankTable*>(table));
  } else if constexpr (Codec::kTable == CodecTable::kTree16) {
    // One thread, constant indices: indexing the kernel parameter with a thread-dependent index
    // (or taking a reference to it) makes the compiler copy the whole parameter block to local
    // memory.
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < 16; ++i) table[i] = p.tree.v[i];
    }
  }
}

// The kEpt elements from e0 as float (zero past n), minus the double-quant subtrahend if any;
// *full tells whether they were one vector load.
template <typename In>
__device__ __forceinline__ void LoadChunk(const QuantizeParams& p,
                                          const typename In::Storage* input, int64_t e0,
                                          float subtract, float (&x)[kEpt], bool* full) {
  *full = p.vectorized && e0 + kEpt <= p.n;
  LoadElements<In>(input, e0, p.n, *full, x);
  if (p.subtract != nullptr) {
#pragma unroll
    for (int i = 0; i < kEpt; ++i) {
      if (e0 + i < p.n) x[i] = __fsub_rn(x[i], subtract);
    }
  }
}

template <typename Codec>
__device__ __forceinline__ void EncodeChunk(const float* table, const float (&x)[kEpt], float inv,
                                            uint8_t (&q)[kEpt]) {
#pragma unroll
  for (int i = 0; i < kEpt; ++i) q[i] = Codec::Encode(table, __fmul_rn(x[i], inv));
}

template <typename Codec>
using CodecTableStorage = float[Codec::kTable == CodecTable::kMap ? kMapRankTableFloats : 16];

// Grid-stride over tiles, blocks of at most kWarpChunk elements. Per block: absmax =
// fmaxf-reduction of |x| starting from -FLT_MAX (the zero padding of a partial last block takes
// part, as in the CPU reference), inv = 1/absmax (IEEE), code = Encode(x * inv).
template <typename In, typename Codec>
__global__ void __launch_bounds__(kThreads) QuantizeBlockwiseKernel(QuantizeParams p) {
  __shared__ CodecTableStorage<Codec> table;
  LoadCodecTable<Codec>(p, table);
  __syncthreads();
  const auto* input = static_cast<const typename In::Storage*>(p.input);
  const int group = (1 << p.log2_blocksize) / kEpt;
  const float subtract = p.subtract != nullptr ? *p.subtract : 0.0f;
  const int64_t tiles = (p.n + kTile - 1) / kTile;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t e0 = tile * kTile + static_cast<int64_t>(threadIdx.x) * kEpt;
    float x[kEpt];
    bool full;
    LoadChunk<In>(p, input, e0, subtract, x, &full);
    float amax = -FLT_MAX;
#pragma unroll
    for (int i = 0; i < kEpt; ++i) amax = fmaxf(amax, fabsf(x[i]));
    amax = GroupMax(amax, group);
    if ((threadIdx.x & (group - 1)) == 0 && e0 < p.n) p.absmax[e0 >> p.log2_blocksize] = amax;
    uint8_t q[kEpt];
    EncodeChunk<Codec>(table, x, ReciprocalAbsmax(amax), q);
    StoreCodes<Codec::kBits>(p.codes, e0, p.n, full, q);
  }
}

// Blocks larger than kWarpChunk: one warp per quantization block, in two passes over it (absmax,
// then encode; the second pass reads the block back from L1/L2). With QuantizeBlockwiseKernel's
// tiling such a block would span warps and need two CTA barriers per tile; here the reduction is
// warp shuffles only. Same elements, same padding, same fmaxf reduction (order-independent), same
// encoder: the same bytes.
template <typename In, typename Codec>
__global__ void __launch_bounds__(kLargeThreads) QuantizeLargeBlocksKernel(QuantizeParams p) {
  __shared__ CodecTableStorage<Codec> table;
  LoadCodecTable<Codec>(p, table);
  __syncthreads();
  const auto* input = static_cast<const typename In::Storage*>(p.input);
  const int lane = threadIdx.x % 32;
  const int64_t blocksize = int64_t{1} << p.log2_blocksize;
  const float subtract = p.subtract != nullptr ? *p.subtract : 0.0f;
  const int64_t blocks = (p.n + blocksize - 1) >> p.log2_blocksize;
  const int64_t warps = int64_t{gridDim.x} * (kLargeThreads / 32);
  for (int64_t block = int64_t{blockIdx.x} * (kLargeThreads / 32) + threadIdx.x / 32;
       block < blocks; block += warps) {
    const int64_t base = block << p.log2_blocksize;
    float amax = -FLT_MAX;
    for (int64_t chunk = 0; chunk < blocksize; chunk += kWarpChunk) {
      float x[kEpt];
      bool full;
      LoadChunk<In>(p, input, base + chunk + lane * kEpt, subtract, x, &full);
#pragma unroll
      for (int i = 0; i < kEpt; ++i) amax = fmaxf(amax, fabsf(x[i]));
    }
    amax = GroupMax(amax, 32);
    if (lane == 0) p.absmax[block] = amax;
    const float inv = ReciprocalAbsmax(amax);
    for (int64_t chunk = 0; chunk < blocksize; chunk += kWarpChunk) {
      const int64_t e0 = base + chunk + lane * kEpt;
      float x[kEpt];
      bool full;
      LoadChunk<In>(p, input, e0, subtract, x, &full);
      uint8_t q[kEpt];
      EncodeChunk<Codec>(table, x, inv, q);
      StoreCodes<Codec::kBits>(p.codes, e0, p.n, full, q);
    }
  }
}

struct DequantizeParams {
  const uint8_t* codes;
  const float* absmax;
  int64_t n;
  int log2_blocksize;
  void* output;        // n elements of the Out type
  const float* table;  // 256-entry map in device memory (8-bit), else null
  Lut16 lut16;         // the 4-bit code book
  float offset;        // added after the scale when add_offset (nested absmax reconstruction)
  bool add_offset;
  bool vectorized;  // output 16-byte aligned, codes 4- (4-bit) or 8-byte (8-bit) aligned
};

// Dequantization moves 2.5625 bytes per element (NF4 -> bf16) and does little arithmetic, so its
// speed is how many independent loads the SMs keep in flight. Measured on an H200 (8192x8192 NF4 ->
// bf16, CTAs of 256, quant_cuda_bench; the copy of the bf16 tensor takes 67.0 us): 16 elements x 2
// steps per thread (this kernel's earlier shape, 8-byte code loads) 62.9 us; 8 x 1: 62.8; 8 x 2:
// 49.7; 8 x 4: 47.1 (4096x4096: 15.7 and 14.9 us against a 19.8 us copy).
inline constexpr int kDequantEpt = 8;
inline constexpr int kDequantIters = 4;

template <int kBits>
union DequantCodes;
template <>
union DequantCodes<4> {
  uint32_t v;
  uint8_t b[kDequantEpt / 2];
};
template <>
union DequantCodes<8> {
  uint2 v;
  uint8_t b[kDequantEpt];
};

// out[k] = Out(f32(table[code(k)] * absmax[k / blocksize]) [+ offset]). Each thread handles kIters
// groups of kDequantEpt elements, all loads issued before the first use.
//
// 4-bit codes are looked up a byte at a time in a 256-entry table of (high nibble's value, low
// nibble's value): one shared load per two elements and no nibble arithmetic. With finite operands
// (every code book value and the block's absmax finite) the product is finite, so the hardware's
// round-to-nearest-even pair conversion (cvt.rn.bf16x2 / f16x2) gives the host's bits; together
// these took 8192x8192 NF4 -> bf16 from 54.5 to 47.0 us (H200, 8 x 2 elements per thread, in a
// stand-alone copy of this kernel).
template <typename Out, int kBits, int kIters>
__global__ void __launch_bounds__(kThreads) DequantizeBlockwiseKernel(DequantizeParams p) {
  using T = typename Out::Storage;
  using VecCodes = decltype(DequantCodes<kBits>::v);
  static_assert(kThreads == 256, "one table entry per thread");
  __shared__ float table[256];          // 8-bit: the map; 4-bit: the 16-entry code book
  __shared__ float2 nibble_pairs[256];  // 4-bit only
  if constexpr (kBits == 8) {
    table[threadIdx.x] = p.table[threadIdx.x];
  } else {
    if (threadIdx.x == 0) {  // constant indices only: see QuantizeBlockwiseKernel
#pragma unroll
      for (int i = 0; i < 16; ++i) table[i] = p.lut16.v[i];
    }
    __syncthreads();
    nibble_pairs[threadIdx.x] = make_float2(table[threadIdx.x >> 4], table[threadIdx.x & 0xF]);
  }
  __syncthreads();
  // A NaN can only come out of table * scale when one of them is not finite; then the slow path
  // reproduces the host's NaN bits (HostMul). The 4-bit code books are finite.
  bool table_finite = true;
  if constexpr (kBits == 8) table_finite = __syncthreads_and(isfinite(table[threadIdx.x]));
  const bool offset_finite = !p.add_offset || isfinite(p.offset);
  const int64_t base =
      (static_cast<int64_t>(blockIdx.x) * kIters * kThreads + threadIdx.x) * kDequantEpt;
  constexpr int kCodeBytes = kDequantEpt * kBits / 8;
  const int64_t code_bytes = (p.n * kBits + 7) / 8;
  DequantCodes<kBits> raw[kIters];
  float scale[kIters];
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t e0 = base + static_cast<int64_t>(it) * kThreads * kDequantEpt;
    scale[it] = 0.0f;
    if (e0 >= p.n) continue;
    const int64_t c0 = e0 * kBits / 8;
    if (p.vectorized && e0 + kDequantEpt <= p.n) {
      raw[it].v = __ldcs(reinterpret_cast<const VecCodes*>(p.codes + c0));
    } else {
#pragma unroll
      for (int j = 0; j < kCodeBytes; ++j) raw[it].b[j] = c0 + j < code_bytes ? p.codes[c0 + j] : 0;
    }
    scale[it] = __ldg(p.absmax + (e0 >> p.log2_blocksize));
  }
  T* output = static_cast<T*>(p.output);
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t e0 = base + static_cast<int64_t>(it) * kThreads * kDequantEpt;
    if (e0 >= p.n) continue;
    // Element i's code book value.
    float looked_up[kDequantEpt];
#pragma unroll
    for (int i = 0; i < kDequantEpt; ++i) {
      if constexpr (kBits == 4) {
        if (i % 2 == 0) {
          const float2 pair = nibble_pairs[raw[it].b[i / 2]];
          looked_up[i] = pair.x;
          looked_up[i + 1] = pair.y;
        }
      } else {
        looked_up[i] = table[raw[it].b[i]];
      }
    }
    Vec<T, kDequantEpt> out;
    if (table_finite && offset_finite && isfinite(scale[it])) {
      float value[kDequantEpt];
#pragma unroll
      for (int i = 0; i < kDequantEpt; ++i) {
        value[i] = __fmul_rn(looked_up[i], scale[it]);
        if (p.add_offset) value[i] = __fadd_rn(value[i], p.offset);
      }
      StoreFinite<Out>(value, out);
    } else {
#pragma unroll
      for (int i = 0; i < kDequantEpt; ++i) {
        float value = HostMul(looked_up[i], scale[it]);
        if (p.add_offset) value = HostAdd(value, p.offset);
        out.e[i] = Out::Store(value);
      }
    }
    if (p.vectorized && e0 + kDequantEpt <= p.n) {
      StoreVec(output + e0, out);
    } else {
#pragma unroll
      for (int i = 0; i < kDequantEpt; ++i) {
        if (e0 + i < p.n) output[e0 + i] = out.e[i];
      }
    }
  }
}

// ---- host side ----

// log2 of a validated (power-of-two) blocksize.
inline int Log2Blocksize(int64_t blocksize) {
  return __builtin_ctzll(static_cast<uint64_t>(blocksize));
}

// Grid-stride launch: as many CTAs as fit on the device at once (one full wave), fewer for small n.
template <typename In, typename Codec>
absl::Status LaunchQuantize(const QuantizeParams& params, cudaStream_t stream, const char* name) {
  if (params.n == 0) return absl::OkStatus();
  QuantizeParams p = params;
  if constexpr (Codec::kTable == CodecTable::kTree16) p.tree = Codec::HostTree();
  KBITD_ASSIGN_OR_RETURN(const int sms, MultiprocessorCount());
  static const int ctas_per_sm = [] {
    int ctas = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, QuantizeBlockwiseKernel<In, Codec>,
                                                      kThreads, 0) != cudaSuccess) {
      cudaGetLastError();
      ctas = 4;
    }
    return ctas > 0 ? ctas : 1;
  }();
  if ((1 << params.log2_blocksize) > kWarpChunk) {
    static const int large_ctas_per_sm = [] {
      int ctas = 0;
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, QuantizeLargeBlocksKernel<In, Codec>,
                                                        kLargeThreads, 0) != cudaSuccess) {
        cudaGetLastError();
        ctas = 1;
      }
      return ctas > 0 ? ctas : 1;
    }();
    const int64_t blocks =
        (params.n + (int64_t{1} << params.log2_blocksize) - 1) >> params.log2_blocksize;
    const int64_t ctas = (blocks + kLargeThreads / 32 - 1) / (kLargeThreads / 32);
    const int64_t wave = int64_t{sms} * large_ctas_per_sm;
    const int grid = static_cast<int>(ctas < wave ? ctas : wave);
    QuantizeLargeBlocksKernel<In, Codec><<<grid, kLargeThreads, 0, stream>>>(p);
    return LaunchStatus(name);
  }
  const int64_t tiles = (params.n + kTile - 1) / kTile;
  const int64_t wave = int64_t{sms} * ctas_per_sm;
  const int grid = static_cast<int>(tiles < wave ? tiles : wave);
  QuantizeBlockwiseKernel<In, Codec><<<grid, kThreads, 0, stream>>>(p);
  return LaunchStatus(name);
}

template <typename Out, int kBits, int kIters = kDequantIters>
absl::Status LaunchDequantize(const DequantizeParams& params, cudaStream_t stream,
                              const char* name) {
  if (params.n == 0) return absl::OkStatus();
  const int64_t per_cta = int64_t{kThreads} * kDequantEpt * kIters;
  const int64_t grid = (params.n + per_cta - 1) / per_cta;
  if (grid > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", params.n, " elements are too many"));
  }
  DequantizeBlockwiseKernel<Out, kBits, kIters>
      <<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(params);
  return LaunchStatus(name);
}

}  // namespace kbitd::quant::cuda::internal
