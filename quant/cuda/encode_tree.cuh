// Internal to quant/cuda: the encoders the quantize kernels use. They walk the comparison tree of
// quant/encode.h (bnb dQuantizeNF4 / dQuantizeFP4 / dQuantize<0> in csrc/kernels.cu) with its
// thresholds in shared memory in breadth-first (Eytzinger) order: node k's children are 2k and
// 2k+1, so every step is one load, one compare and one shift-add, without divergence, and each tree
// level lies in consecutive words (few bank conflicts). The comparisons are the reference's,
// against the same binary32 values, in the same order, so the codes are the same on every input
// (CountEncoderMismatches checks all 2^32 of them).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace kbitd::quant::cuda::internal {

struct Lut16 {
  float v[16];
};

// Breadth-first layout of 2^levels - 1 ascending thresholds: node k (1-based) at depth L holds
// t[(2 (k - 2^L) + 1) * 2^(levels - 1 - L) - 1]; slot 0 is unused.
inline Lut16 EytzingerTree(const uint32_t* threshold_bits, int levels) {
  Lut16 tree{};
  for (int depth = 0; depth < levels; ++depth) {
    for (int k = 1 << depth; k < (2 << depth); ++k) {
      const int index = (2 * (k - (1 << depth)) + 1) * (1 << (levels - 1 - depth)) - 1;
      tree.v[k] = FloatFromBits(threshold_bits[index]);
    }
  }
  return tree;
}

// NF4: 15 thresholds, 4 levels; the leaf reached is 16 + code.
__device__ __forceinline__ uint8_t EncodeNf4Tree(const float* tree, float x) {
  int k = 1;
#pragma unroll
  for (int level = 0; level < 4; ++level) k = 2 * k + (x > tree[k] ? 1 : 0);
  return static_cast<uint8_t>(k - 16);
}

// FP4: sign from x < 0, magnitude rank from 7 thresholds (3 levels), 3-bit pattern =
// kFp4PatternByRank[rank] = rank ^ ((rank << 1) & 4).
__device__ __forceinline__ uint8_t EncodeFp4Tree(const float* tree, float x) {
  const int sign = x < 0.0f ? 0b1000 : 0;
  const float m = fabsf(x);
  int k = 1;
#pragma unroll
  for (int level = 0; level < 3; ++level) k = 2 * k + (m > tree[k] ? 1 : 0);
  const int rank = k - 8;
  return static_cast<uint8_t>(sign | (rank ^ ((rank << 1) & 4)));
}

// 8-bit dynamic map. EncodeDynamic8bit's pivots 127, 127 +- 64, ... form a 255-node search tree:
// node k at depth L is pivot (2 (k - 2^L) + 1) * 2^(7 - L) - 1 (depth 7 holds the even indices the
// last step lands on). tree[k] = code[pivot(k)] for k = 1..255, tree[0] = code[0],
// tree[256] = code[255].
inline constexpr int kMapTreeSize = 257;

__device__ __forceinline__ int MapPivot(int k, int depth) {
  return (2 * (k - (1 << depth)) + 1) * (1 << (7 - depth)) - 1;
}

// Fills tree[] from code[] (256 entries); called by all kThreads (>= 256) threads, then a barrier.
__device__ __forceinline__ void LoadMapTree(const float* code, float* tree) {
  const int k = threadIdx.x;
  if (k == 0) {
    tree[0] = code[0];
    tree[256] = code[255];
  } else if (k < 256) {
    const int depth = 31 - __clz(k);
    tree[k] = code[MapPivot(k, depth)];
  }
}

// A literal re-walk of EncodeDynamic8bit (same comparisons, same neighbours, same midpoints).
__device__ __forceinline__ uint8_t EncodeDynamic8bitTree(const float* tree, float x) {
  int k = 1;
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = -1.0f;
  float upper = 1.0f;
  float val = tree[1];
#pragma unroll
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += step;
      k = 2 * k + 1;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= step;
      k = 2 * k;
    }
    val = tree[k];
  }
  if (upper_pivot == 255) upper = tree[256];
  if (lower_pivot == 0) lower = tree[0];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

}  // namespace kbitd::quant::cuda::internal
