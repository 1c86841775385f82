// Internal to quant/cuda: the encoders the quantize kernels use. NF4 and FP4 walk the comparison
// tree of quant/encode.h (bnb dQuantizeNF4 / dQuantizeFP4 in csrc/kernels.cu) with its
// thresholds in shared memory in breadth-first (Eytzinger) order: node k's children are 2k and
// 2k+1, so every step is one load, one compare and one shift-add, without divergence, and each tree
// level lies in consecutive words (few bank conflicts). The comparisons are the reference's,
// against the same binary32 values, in the same order, so the codes are the same on every input
// (CountEncoderMismatches checks all 2^32 of them). The 8-bit map (dQuantize<0>) is encoded by
// rank, below.
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

// 8-bit dynamic map by rank. EncodeDynamic8bit's 7 comparisons
// (x > code[pivot] at pivots 127, 127 +- 64, ...: all odd) search the 127 odd-indexed values, which
// are ascending, so its final pivot is p = 2r with r = #{j < 127 : code[2j + 1] < x} (0 for NaN,
// which fails every comparison), its last right turn is p - 1 (lower_pivot 0 if none) and its last
// left turn p + 1 (upper_pivot 255 if none); lower and upper are the codes at those pivots, and
// its two midpoints depend on r alone, so they are computed once per CTA, with the same float
// operations. r comes from a table of r at the lower edge of each of 2^kMapBucketBits buckets of
// an order-preserving key of x (sign, exponent, top mantissa bits); bit 7 marks buckets that hold
// no odd code value, where that r is exact, and elsewhere a short forward scan finishes it. Three
// shared-memory loads per element instead of the search's eight, which, with bank conflicts, were
// what limited the kernel. CountEncoderMismatches checks it on all 2^32 inputs.
inline constexpr int kMapBucketBits = 12;
inline constexpr int kMapBuckets = 1 << kMapBucketBits;
inline constexpr uint8_t kExactRank = 0x80;

struct MapRankTable {
  float code[256];
  float midpoint_above[128];  // (code[upper_pivot] + code[2r]) * 0.5f
  float midpoint_below[128];  // (code[lower_pivot] + code[2r]) * 0.5f
  uint16_t odd_bucket[128];   // bucket of code[2j + 1] (ascending in j); [127] = kMapBuckets
  uint8_t first_rank[kMapBuckets];
};

// Monotone in x for non-NaN floats, with -0.0 and +0.0 equal (as the comparisons see them).
__device__ __forceinline__ uint32_t MapOrderKey(float x) {
  const uint32_t bits = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Fills the table from code256 (256 ascending values). Called by all threads of the CTA (>= 256);
// it synchronizes twice inside, the caller once after. A bucket's first rank is the number of odd
// codes in lower buckets (key(c) < edge <=> key(c) >> (32 - kMapBucketBits) < bucket), found by a
// binary search over their ascending bucket numbers; it is exact when no odd code lies in it.
__device__ __forceinline__ void LoadMapRanks(const float* code256, MapRankTable* t) {
  if (threadIdx.x < 256) t->code[threadIdx.x] = code256[threadIdx.x];
  __syncthreads();
  if (threadIdx.x < 128) {
    const int r = threadIdx.x, pivot = 2 * r;
    const float val = t->code[pivot];
    t->midpoint_above[r] = (t->code[r < 127 ? pivot + 1 : 255] + val) * 0.5f;
    t->midpoint_below[r] = (t->code[r > 0 ? pivot - 1 : 0] + val) * 0.5f;
    t->odd_bucket[r] =
        r < 127 ? static_cast<uint16_t>(MapOrderKey(t->code[pivot + 1]) >> (32 - kMapBucketBits))
                : static_cast<uint16_t>(kMapBuckets);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kMapBuckets; b += blockDim.x) {
    int lo = 0, hi = 127;  // first j with odd_bucket[j] >= b
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (t->odd_bucket[mid] < b) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    t->first_rank[b] = static_cast<uint8_t>(lo | (t->odd_bucket[lo] != b ? kExactRank : 0));
  }
}

__device__ __forceinline__ uint8_t EncodeDynamic8bitRank(const MapRankTable& t, float x) {
  int r = 0;
  if (x == x) {
    const uint8_t entry = t.first_rank[MapOrderKey(x) >> (32 - kMapBucketBits)];
    r = entry & 0x7F;
    if (!(entry & kExactRank)) {
      while (r < 127 && t.code[2 * r + 1] < x) ++r;
    }
  }
  const int pivot = 2 * r;
  if (x > t.code[pivot]) {
    return static_cast<uint8_t>(x > t.midpoint_above[r] ? (r < 127 ? pivot + 1 : 255) : pivot);
  }
  return static_cast<uint8_t>(x < t.midpoint_below[r] ? (r > 0 ? pivot - 1 : 0) : pivot);
}

}  // namespace kbitd::quant::cuda::internal
