#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "quant/cuda/cuda_check.h"
#include "runtime/cuda/four_bit_linear.h"

// Design (why it is shaped this way; docs/performance.md has the measurements):
// - Tensor cores do the multiply-adds. The weight tile is the MMA's A operand (16 output features ×
//   16 k, m16n8k16) and the activations are B (k × 8 batch rows), so one MMA serves up to 8 rows of
//   x and two serve 16: the cost per weight is the decode, whatever the batch, which is what keeps
//   M = 16 near the M = 1 time. The dot product does not care in which order k is summed, so the k
//   slots of an MMA are mapped to whatever bytes a thread loaded, and x is read in the same order:
//   thread (g = lane / 4, j = lane % 4) reads 8 contiguous bytes (16 codes) of rows g and g + 8 per
//   64-code chunk and 16 contiguous activations per batch row. No repacking at load, so the
//   resident bytes stay bitsandbytes' own and Dequantize / Export need nothing special.
// - A chunk of 64 codes never straddles an absmax block (blocksize is a power of two ≥ 64), so the
//   four MMAs of a chunk run on the raw code values and their fp32 sums are scaled by the absmax
//   once: 4 FMULs per chunk instead of a multiply per weight, and the product is rounded only in
//   fp32. Double-quantized absmax is decoded here per chunk (1 byte read instead of 4).
// - Decoding: a byte (two codes) indexes a 256-entry table of code pairs already in the MMA's
//   dtype. Lookups with random indices would conflict on shared-memory banks, so the table has a
//   copy per lane laid out [byte][lane]: every lane reads its own bank. 32 KiB per block.
// - Each block owns 16 output features over all of k; its 8 warps split k and sum in shared memory,
//   so the result is deterministic (no atomics) and the launch is one kernel.
namespace kbitd::runtime::cuda {
namespace {

using quant::cuda::AsCudaStream;
using quant::cuda::LaunchStatus;

constexpr int kTileRows = 16;  // output features per block (the MMA's m)
constexpr int kChunk = 64;     // codes per row per chunk: 32 bytes, 8 per thread

// Shared memory of a block: the pair table, the nested map, the warps' partial sums, the code.
constexpr int SharedBytes(int warps, int table_copies) {
  return (256 * table_copies + 256 + warps * kTileRows * kFourBitLinearMaxRows) * 4 + 16 * 2;
}

struct Params {
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_codes;
  const float* nested_absmax;
  const float* nested_code;
  float nested_offset;
  int log2_blocksize;
  int64_t n;
  int64_t k;
  int m;
  const void* x;
  void* y;
  bool y_float;
  float code[16];
};

template <typename T>
struct Elem;
template <>
struct Elem<__nv_bfloat16> {
  __device__ static uint16_t Bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  __device__ static void Store(void* y, int64_t i, float v) {
    static_cast<__nv_bfloat16*>(y)[i] = __float2bfloat16_rn(v);
  }
  // d += A·B, fp32 accumulate.
  __device__ static void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct Elem<__half> {
  __device__ static uint16_t Bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ static void Store(void* y, int64_t i, float v) {
    static_cast<__half*>(y)[i] = __float2half_rn(v);
  }
  __device__ static void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// The weight stream is read once: keep it out of L1 so x and the absmax stay there, and have L2
// fetch the 256 bytes around it (a warp walks each row's bytes in order, so that is the data its
// next chunks need: it keeps more bytes in flight than registers could).
__device__ __forceinline__ uint2 LoadStreaming(const uint8_t* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0, %1}, [%2];\n"
               : "=r"(v.x), "=r"(v.y)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t Byte(uint32_t word, int index) {
  return __byte_perm(word, 0, 0x4440 + index);
}

__device__ __forceinline__ uint32_t Word(const uint4 (&v)[2], int index) {
  const uint4& half = v[index >> 2];
  switch (index & 3) {
    case 0:
      return half.x;
    case 1:
      return half.y;
    case 2:
      return half.z;
    default:
      return half.w;
  }
}

// What one warp lane loads for kUnroll chunks of its two rows: the packed bytes and the scale
// inputs (the absmax, or for double quant the code byte and the nested absmax, decoded later so
// that no load waits on another).
template <int kUnroll>
struct Fetch {
  uint2 bytes_g[kUnroll], bytes_g8[kUnroll];
  float scale_g[kUnroll], scale_g8[kUnroll];   // absmax, or the nested absmax
  uint32_t code_g[kUnroll], code_g8[kUnroll];  // double quant: the absmax's 8-bit code
};

template <bool kNested>
__device__ __forceinline__ void LoadScale(const Params& p, int64_t flat_index, float& scale,
                                          uint32_t& code) {
  const int64_t block = flat_index >> p.log2_blocksize;
  if constexpr (!kNested) {
    scale = __ldg(p.absmax + block);
  } else {
    code = __ldg(p.absmax_codes + block);
    scale = __ldg(p.nested_absmax + (block >> 8));
  }
}

// bitsandbytes' dequantize of the nested state, then + offset: no FMA contraction.
template <bool kNested>
__device__ __forceinline__ float Absmax(const Params& p, const float* nested_map, float scale,
                                        uint32_t code) {
  if constexpr (!kNested) return scale;
  return __fadd_rn(__fmul_rn(nested_map[code], scale), p.nested_offset);
}

// kWarps split k within the block; kUnroll chunks in flight per warp; kCopies copies of the pair
// table (32: one per lane, no bank conflicts; 16: half the shared memory, at most 2-way).
template <typename T, int kBatchTiles, bool kNested, int kWarps, int kUnroll, int kCopies,
          int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) FourBitLinearKernel(const Params p) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kPairTableWords = 256 * kCopies;
  extern __shared__ __align__(16) uint32_t shared[];
  uint32_t* pair_table = shared;
  float* nested_map = reinterpret_cast<float*>(shared + kPairTableWords);
  float* partial = nested_map + 256;  // [warp][row][batch]
  uint16_t* code_bits = reinterpret_cast<uint16_t*>(partial + kWarps * kTileRows * 16);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const auto build_tables = [&] {
    if (tid < 16) code_bits[tid] = Elem<T>::Bits(p.code[tid]);
    if (kNested) {
      for (int i = tid; i < 256; i += kThreads) nested_map[i] = p.nested_code[i];
    }
    __syncthreads();
    // Entry [byte][copy]: low half the code of the high nibble (the lower k), high half the other.
    for (int i = tid; i < kPairTableWords; i += kThreads) {
      const int byte = i / kCopies;
      pair_table[i] = static_cast<uint32_t>(code_bits[byte >> 4]) |
                      (static_cast<uint32_t>(code_bits[byte & 15]) << 16);
    }
    __syncthreads();
  };

  const int g = lane >> 2, j = lane & 3;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kTileRows + g;  // and row + 8
  const int64_t row_bytes = p.k / 2;
  const uint8_t* weights_g = p.packed + row * row_bytes + j * 8;
  const uint8_t* weights_g8 = weights_g + 8 * row_bytes;
  const int64_t flat_g = row * p.k, flat_g8 = flat_g + 8 * p.k;
  const uint32_t* table = pair_table + (lane % kCopies);

  const T* x_rows[kBatchTiles];
  bool x_valid[kBatchTiles];
#pragma unroll
  for (int t = 0; t < kBatchTiles; ++t) {
    const int batch_row = g + 8 * t;
    x_valid[t] = batch_row < p.m;
    x_rows[t] = static_cast<const T*>(p.x) + static_cast<int64_t>(batch_row) * p.k + j * 16;
  }

  const int chunks = static_cast<int>(p.k / kChunk);
  const int per_warp = (chunks + kWarps - 1) / kWarps;
  const int chunk_begin = warp * per_warp;
  const int chunk_end = min(chunks, chunk_begin + per_warp);

  const auto load = [&](Fetch<kUnroll>& f, int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u;
      if (c < chunk_end) {
        f.bytes_g[u] = LoadStreaming(weights_g + c * (kChunk / 2));
        f.bytes_g8[u] = LoadStreaming(weights_g8 + c * (kChunk / 2));
        LoadScale<kNested>(p, flat_g + c * kChunk, f.scale_g[u], f.code_g[u]);
        LoadScale<kNested>(p, flat_g8 + c * kChunk, f.scale_g8[u], f.code_g8[u]);
      } else {
        f.bytes_g[u] = f.bytes_g8[u] = make_uint2(0, 0);
        f.scale_g[u] = f.scale_g8[u] = 0.f;
        f.code_g[u] = f.code_g8[u] = 0;
      }
    }
  };
  float acc[kBatchTiles][4] = {};
  const auto compute = [&](const Fetch<kUnroll>& f, int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u;
      if (c >= chunk_end) break;
      // x from L1/L2: every block of the launch reads the same activations.
      uint4 xv[kBatchTiles][2];
#pragma unroll
      for (int t = 0; t < kBatchTiles; ++t) {
        if (x_valid[t]) {
          const uint4* src = reinterpret_cast<const uint4*>(x_rows[t] + c * kChunk);
          xv[t][0] = __ldg(src);
          xv[t][1] = __ldg(src + 1);
        } else {
          xv[t][0] = xv[t][1] = make_uint4(0, 0, 0, 0);
        }
      }
      float d[kBatchTiles][4] = {};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t word_g = s < 2 ? f.bytes_g[u].x : f.bytes_g[u].y;
        const uint32_t word_g8 = s < 2 ? f.bytes_g8[u].x : f.bytes_g8[u].y;
        const int at = (s & 1) * 2;
        const uint32_t a[4] = {
            table[Byte(word_g, at) * kCopies], table[Byte(word_g8, at) * kCopies],
            table[Byte(word_g, at + 1) * kCopies], table[Byte(word_g8, at + 1) * kCopies]};
#pragma unroll
        for (int t = 0; t < kBatchTiles; ++t) {
          Elem<T>::Mma(d[t], a, Word(xv[t], 2 * s), Word(xv[t], 2 * s + 1));
        }
      }
      const float scale_g = Absmax<kNested>(p, nested_map, f.scale_g[u], f.code_g[u]);
      const float scale_g8 = Absmax<kNested>(p, nested_map, f.scale_g8[u], f.code_g8[u]);
#pragma unroll
      for (int t = 0; t < kBatchTiles; ++t) {
        acc[t][0] += scale_g * d[t][0];
        acc[t][1] += scale_g * d[t][1];
        acc[t][2] += scale_g8 * d[t][2];
        acc[t][3] += scale_g8 * d[t][3];
      }
    }
  };

  // Two fetch buffers: the next chunks' loads are in flight while these are decoded, and the
  // first loads go out before the block builds its tables.
  Fetch<kUnroll> front, back;
  load(front, chunk_begin);
  build_tables();
  for (int c0 = chunk_begin; c0 < chunk_end; c0 += 2 * kUnroll) {
    load(back, c0 + kUnroll);
    compute(front, c0);
    if (c0 + kUnroll >= chunk_end) break;
    load(front, c0 + 2 * kUnroll);
    compute(back, c0 + kUnroll);
  }

  // C fragment: c0, c1 = rows g, batch 2j, 2j+1; c2, c3 = row g + 8.
  float* mine = partial + warp * kTileRows * 16;
#pragma unroll
  for (int t = 0; t < kBatchTiles; ++t) {
    const int b = 2 * j + 8 * t;
    mine[g * 16 + b] = acc[t][0];
    mine[g * 16 + b + 1] = acc[t][1];
    mine[(g + 8) * 16 + b] = acc[t][2];
    mine[(g + 8) * 16 + b + 1] = acc[t][3];
  }
  __syncthreads();
  for (int i = tid; i < kTileRows * 16; i += kThreads) {
    const int r = i >> 4, b = i & 15;
    if (b < p.m) {
      float sum = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += partial[w * kTileRows * 16 + r * 16 + b];
      const int64_t at =
          static_cast<int64_t>(b) * p.n + static_cast<int64_t>(blockIdx.x) * kTileRows + r;
      if (p.y_float) {
        static_cast<float*>(p.y)[at] = sum;
      } else {
        Elem<T>::Store(p.y, at, sum);
      }
    }
  }
}

template <typename T, int kWarps, int kUnroll, int kCopies, int kMinBlocks>
absl::Status Launch(const Params& params, bool nested, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(params.n / kTileRows);
  constexpr int kShared = SharedBytes(kWarps, kCopies);
  static_assert(kShared <= 48 * 1024, "over the default dynamic shared memory limit");
  if (params.m <= 8) {
    if (nested) {
      FourBitLinearKernel<T, 1, true, kWarps, kUnroll, kCopies, kMinBlocks>
          <<<blocks, kWarps * 32, kShared, stream>>>(params);
    } else {
      FourBitLinearKernel<T, 1, false, kWarps, kUnroll, kCopies, kMinBlocks>
          <<<blocks, kWarps * 32, kShared, stream>>>(params);
    }
  } else if (nested) {
    FourBitLinearKernel<T, 2, true, kWarps, kUnroll, kCopies, kMinBlocks>
        <<<blocks, kWarps * 32, kShared, stream>>>(params);
  } else {
    FourBitLinearKernel<T, 2, false, kWarps, kUnroll, kCopies, kMinBlocks>
        <<<blocks, kWarps * 32, kShared, stream>>>(params);
  }
  return LaunchStatus("FourBitLinear");
}

// The launch shapes compiled in (FourBitLinearTuning); the first is the default.
template <typename T>
absl::Status LaunchTuned(const Params& params, bool nested, const FourBitLinearTuning& t,
                         cudaStream_t stream) {
  const auto is = [&](int warps, int unroll, int copies, int min_blocks) {
    return t.warps == warps && t.unroll == unroll && t.table_copies == copies &&
           t.min_blocks == min_blocks;
  };
  if (is(8, 4, 32, 1)) return Launch<T, 8, 4, 32, 1>(params, nested, stream);
  if (is(8, 2, 32, 1)) return Launch<T, 8, 2, 32, 1>(params, nested, stream);
  if (is(8, 4, 16, 1)) return Launch<T, 8, 4, 16, 1>(params, nested, stream);
  if (is(8, 4, 32, 3)) return Launch<T, 8, 4, 32, 3>(params, nested, stream);
  if (is(8, 2, 32, 3)) return Launch<T, 8, 2, 32, 3>(params, nested, stream);
  if (is(8, 2, 16, 4)) return Launch<T, 8, 2, 16, 4>(params, nested, stream);
  if (is(4, 2, 16, 6)) return Launch<T, 4, 2, 16, 6>(params, nested, stream);
  return absl::InvalidArgumentError(
      absl::StrCat("FourBitLinear: no compiled variant with ", t.warps, " warps, unroll ", t.unroll,
                   ", ", t.table_copies, " table copies, ", t.min_blocks, " blocks per SM"));
}

bool IsPowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

const std::vector<FourBitLinearTuning>& FourBitLinearVariants() {
  static const std::vector<FourBitLinearTuning> variants = {
      {8, 4, 32, 1}, {8, 2, 32, 1}, {8, 4, 16, 1}, {8, 4, 32, 3},
      {8, 2, 32, 3}, {8, 2, 16, 4}, {4, 2, 16, 6}};  // as LaunchTuned dispatches them
  return variants;
}

bool FourBitLinearFits(int64_t m, const FourBitLinearWeight& w, ScalarType x_dtype,
                       ScalarType y_dtype) {
  const bool half_dtype = x_dtype == ScalarType::kBFloat16 || x_dtype == ScalarType::kFloat16;
  return m >= 1 && m <= kFourBitLinearMaxRows && w.n > 0 && w.n % kTileRows == 0 && w.k > 0 &&
         w.k % kChunk == 0 && w.blocksize >= kChunk && IsPowerOfTwo(w.blocksize) && half_dtype &&
         (y_dtype == x_dtype || y_dtype == ScalarType::kFloat32) &&
         (w.absmax != nullptr ||
          (w.absmax_codes != nullptr && w.nested_absmax != nullptr && w.nested_code != nullptr));
}

absl::Status LaunchFourBitLinear(const FourBitLinearWeight& w, const void* x, int64_t m,
                                 ScalarType x_dtype, void* y, ScalarType y_dtype, void* stream,
                                 const FourBitLinearTuning& tuning) {
  if (!FourBitLinearFits(m, w, x_dtype, y_dtype) || w.packed == nullptr || x == nullptr ||
      y == nullptr || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.packed) % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FourBitLinear: [", m, ", ", w.k, "] x [", w.n, ", ", w.k, "] in ",
        std::string(TorchDtypeName(x_dtype)), " -> ", std::string(TorchDtypeName(y_dtype)),
        ", blocksize ", w.blocksize, " does not fit the fused kernel (m ≤ 16, n % 16, k % 64, ",
        "power-of-two blocksize ≥ 64, 16-bit activations, aligned pointers)"));
  }
  int log2_blocksize = 0;
  while ((int64_t{1} << log2_blocksize) < w.blocksize) ++log2_blocksize;
  Params params{};
  params.packed = w.packed;
  params.absmax = w.absmax;
  params.absmax_codes = w.absmax_codes;
  params.nested_absmax = w.nested_absmax;
  params.nested_code = w.nested_code;
  params.nested_offset = w.nested_offset;
  params.log2_blocksize = log2_blocksize;
  params.n = w.n;
  params.k = w.k;
  params.m = static_cast<int>(m);
  params.x = x;
  params.y = y;
  params.y_float = y_dtype == ScalarType::kFloat32;
  for (int i = 0; i < 16; ++i) params.code[i] = w.code[i];
  const bool nested = w.absmax == nullptr;
  const cudaStream_t s = AsCudaStream(stream);
  if (x_dtype == ScalarType::kBFloat16)
    return LaunchTuned<__nv_bfloat16>(params, nested, tuning, s);
  return LaunchTuned<__half>(params, nested, tuning, s);
}

}  // namespace kbitd::runtime::cuda
