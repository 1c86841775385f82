#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/cuda/cuda_check.h"
#include "runtime/cuda/cuda_kernels.h"

namespace kbitd::runtime::cuda {
namespace {

using quant::cuda::AsCudaStream;
using quant::cuda::LaunchStatus;

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
// Rounds a float to T's precision and back: the result of one PyTorch op in dtype T.
template <typename T>
__device__ __forceinline__ float Round(float x) {
  return ToFloat(FromFloat<T>(x));
}

// Calls fn.template operator()<T>() with T the CUDA type of `dtype`.
template <typename Fn>
absl::Status DispatchFloat(ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case ScalarType::kFloat32:
      return fn(float{});
    case ScalarType::kFloat16:
      return fn(__half{});
    case ScalarType::kBFloat16:
      return fn(__nv_bfloat16{});
    default:
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", std::string(TorchDtypeName(dtype)),
                                                     " is not float32, float16 or bfloat16"));
  }
}

constexpr int kThreads = 256;

int Blocks(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

__device__ __forceinline__ void Flag(int32_t* error_flags, int32_t bit) {
  if (error_flags != nullptr) atomicOr(error_flags, bit);
}

template <typename Tin, typename Tout>
__global__ void EmbeddingKernel(const Tin* table, int64_t vocab, const int32_t* ids, int64_t tokens,
                                int64_t hidden, Tout* out, int32_t* error_flags) {
  const int64_t n = tokens * hidden;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / hidden, c = i % hidden;
    const int32_t id = ids[t];
    if (id < 0 || id >= vocab) {
      if (c == 0) Flag(error_flags, kBadToken);
      continue;
    }
    out[i] = FromFloat<Tout>(ToFloat(table[id * hidden + c]));
  }
}

template <typename T>
__global__ void RmsNormKernel(const T* x, const float* weight, float eps, int64_t features, T* y) {
  const T* in = x + blockIdx.x * features;
  T* out = y + blockIdx.x * features;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < features; i += blockDim.x) {
    const float v = ToFloat(in[i]);
    sum += v * v;
  }
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    sum = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x == 0) partial[0] = sum;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(partial[0] / static_cast<float>(features) + eps);
  for (int64_t i = threadIdx.x; i < features; i += blockDim.x) {
    out[i] = FromFloat<T>(weight[i] * Round<T>(ToFloat(in[i]) * inv));
  }
}

template <typename T>
__global__ void RopeKernel(T* q, int64_t q_width, T* k, int64_t k_width, int64_t tokens,
                           int64_t head_dim, const int32_t* positions, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t pairs_per_token = (q_width + k_width) / 2;
  const int64_t n = tokens * pairs_per_token;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = idx / pairs_per_token;
    int64_t pair = idx % pairs_per_token;
    T* row;
    if (pair < q_width / 2) {
      row = q + t * q_width;
    } else {
      pair -= q_width / 2;
      row = k + t * k_width;
    }
    const int64_t head = pair / half, i = pair % half;
    T* v = row + head * head_dim;
    // transformers: freqs = inv_freq (f32) * position (f32); cos/sin in f32, cast to the dtype.
    const float angle = inv_freq[i] * static_cast<float>(positions[t]);
    const float c = Round<T>(static_cast<float>(cos(static_cast<double>(angle))));
    const float s = Round<T>(static_cast<float>(sin(static_cast<double>(angle))));
    const float a = ToFloat(v[i]), b = ToFloat(v[i + half]);
    v[i] = FromFloat<T>(Round<T>(a * c) + Round<T>(-b * s));
    v[i + half] = FromFloat<T>(Round<T>(b * c) + Round<T>(a * s));
  }
}

// The cache slot of `position` of `token`'s sequence, or -1 when the sequence, the position or
// the block it names is out of range.
__device__ __forceinline__ int64_t SlotOf(const StepPointers& step, const PagedKv& cache,
                                          int64_t token, int64_t position) {
  const int32_t sequence = step.token_sequence[token];
  if (sequence < 0 || sequence >= step.sequences || position < 0 ||
      position >= step.max_blocks * cache.block_size) {
    return -1;
  }
  const int32_t block = step.block_tables[sequence * step.max_blocks + position / cache.block_size];
  if (block < 0 || block >= cache.num_blocks) return -1;
  return static_cast<int64_t>(block) * cache.block_size + position % cache.block_size;
}

template <typename T>
__global__ void WriteKvKernel(PagedKv cache, StepPointers step, const T* k, const T* v) {
  const int64_t width = cache.num_kv_heads * cache.head_dim;
  const int64_t n = step.tokens * width;
  T* keys = static_cast<T*>(cache.keys);
  T* values = static_cast<T*>(cache.values);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / width, e = i % width;
    const int64_t slot = SlotOf(step, cache, t, step.positions[t]);
    if (slot < 0) {
      if (e == 0) Flag(step.error_flags, kBadKvWrite);
      continue;
    }
    keys[slot * width + e] = k[i];
    values[slot * width + e] = v[i];
  }
}

constexpr int kAttentionWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;

// One block per (token, head); each warp walks every kAttentionWarps-th position with an online
// softmax (running max, sum and weighted V in registers), then the warps' states are merged.
template <typename T>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    PagedAttentionKernel(PagedKv cache, StepPointers step, const T* q, int64_t num_heads, T* out) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t head_dim = cache.head_dim;
  const int64_t kv_width = cache.num_kv_heads * head_dim;
  const int64_t kv_head = h / (num_heads / cache.num_kv_heads);
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  const T* qh = q + t * num_heads * head_dim + h * head_dim;
  float qv[kPerLane], acc[kPerLane];
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t d = lane + 32 * j;
    qv[j] = d < head_dim ? ToFloat(qh[d]) : 0.0f;
    acc[j] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  const T* keys = static_cast<const T*>(cache.keys);
  const T* values = static_cast<const T*>(cache.values);
  const int64_t length = step.positions[t] + 1;
  // Every position this token reads must be in range (checked by the whole block, so that a bad
  // token leaves its output unwritten rather than half-computed).
  __shared__ int bad;
  if (threadIdx.x == 0) bad = length <= 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < length && !bad; p += blockDim.x) {
    if (SlotOf(step, cache, t, p) < 0) bad = 1;
  }
  __syncthreads();
  if (bad) {
    if (threadIdx.x == 0 && h == 0) Flag(step.error_flags, kBadKvRead);
    return;
  }
  for (int64_t p = warp; p < length; p += kAttentionWarps) {
    const int64_t base = SlotOf(step, cache, t, p) * kv_width + kv_head * head_dim;
    float dot = 0.0f;
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      if (d < head_dim) dot += qv[j] * ToFloat(keys[base + d]);
    }
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    const float score = dot * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max);
    const float weight = expf(score - new_max);
    running_sum = running_sum * correction + weight;
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      const float value = d < head_dim ? ToFloat(values[base + d]) : 0.0f;
      acc[j] = acc[j] * correction + weight * value;
    }
    running_max = new_max;
  }
  __shared__ float warp_max[kAttentionWarps], warp_sum[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t d = lane + 32 * j;
    if (d < head_dim) warp_acc[warp][d] = acc[j];
  }
  __syncthreads();
  float total_max = -INFINITY;
  for (int w = 0; w < kAttentionWarps; ++w) total_max = fmaxf(total_max, warp_max[w]);
  float total_sum = 0.0f;
  for (int w = 0; w < kAttentionWarps; ++w) {
    if (warp_sum[w] > 0.0f) total_sum += warp_sum[w] * expf(warp_max[w] - total_max);
  }
  T* o = out + t * num_heads * head_dim + h * head_dim;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float value = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) {
      if (warp_sum[w] > 0.0f) value += warp_acc[w][d] * expf(warp_max[w] - total_max);
    }
    o[d] = FromFloat<T>(value / total_sum);
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* gate, const T* up, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = ToFloat(gate[i]);
    out[i] = FromFloat<T>(Round<T>(g / (1.0f + expf(-g))) * ToFloat(up[i]));
  }
}

template <typename T>
__global__ void AddKernel(T* x, const T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = FromFloat<T>(ToFloat(x[i]) + ToFloat(y[i]));
  }
}

template <typename T>
__global__ void AddBiasKernel(T* y, const float* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = FromFloat<T>(ToFloat(y[i]) + bias[i % cols]);
  }
}

template <typename T, typename Through>
__global__ void RoundToKernel(T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = FromFloat<T>(Round<Through>(ToFloat(x[i])));
  }
}

template <typename Tin, typename Tout>
__global__ void ConvertKernel(const Tin* src, int64_t n, Tout* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = FromFloat<Tout>(ToFloat(src[i]));
  }
}

__global__ void GatherRowsKernel(const uint8_t* x, int64_t x_rows, int64_t row_bytes,
                                 const int32_t* rows, int64_t count, uint8_t* out,
                                 int32_t* error_flags) {
  const int64_t n = count * row_bytes;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / row_bytes, b = i % row_bytes;
    const int32_t row = rows[r];
    if (row < 0 || row >= x_rows) {
      if (b == 0) Flag(error_flags, kBadGatherRow);
      continue;
    }
    out[i] = x[row * row_bytes + b];
  }
}

// Warp-wide arg-max: the larger value wins; on a tie (or both absent, index < 0) the lower index.
__device__ __forceinline__ void WarpArgMax(float& value, int64_t& index) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_down_sync(0xFFFFFFFFu, value, offset);
    const int64_t i = __shfl_down_sync(0xFFFFFFFFu, index, offset);
    const bool other_wins = i >= 0 && (index < 0 || v > value || (v == value && i < index));
    if (other_wins) {
      value = v;
      index = i;
    }
  }
}

// One block per row: a pass for the first arg-max (NaN skipped), a pass for the fp64 sum of exp.
__global__ void GreedySampleKernel(const float* logits, int64_t vocab, int32_t* tokens,
                                   float* logprobs) {
  constexpr int kThreads = 1024;
  __shared__ float best_value[kThreads / 32];
  __shared__ int64_t best_index[kThreads / 32];
  __shared__ double partial[kThreads / 32];
  const float* row = logits + blockIdx.x * vocab;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float value = -INFINITY;
  int64_t index = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = row[i];
    if (v == v && (index < 0 || v > value)) {  // strided: each thread sees increasing i
      value = v;
      index = i;
    }
  }
  WarpArgMax(value, index);
  if (lane == 0) {
    best_value[warp] = value;
    best_index[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    value = best_value[lane];
    index = best_index[lane];
    WarpArgMax(value, index);
    if (lane == 0) {
      best_value[0] = value;
      best_index[0] = index;
    }
  }
  __syncthreads();
  const int64_t chosen = best_index[0];
  if (chosen < 0) {
    if (threadIdx.x == 0) {
      tokens[blockIdx.x] = 0;
      logprobs[blockIdx.x] = NAN;
    }
    return;
  }
  const float max_v = best_value[0];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    sum += exp(static_cast<double>(__fsub_rn(row[i], max_v)));
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xFFFFFFFFu, sum, offset);
  if (lane == 0) partial[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    const float log_sum = __fadd_rn(static_cast<float>(log(total)), max_v);
    tokens[blockIdx.x] = static_cast<int32_t>(chosen);
    logprobs[blockIdx.x] = __fsub_rn(max_v, log_sum);
  }
}

}  // namespace

absl::Status LaunchGreedySample(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens,
                                float* logprobs, void* stream) {
  if (rows == 0) return absl::OkStatus();
  GreedySampleKernel<<<static_cast<unsigned>(rows), 1024, 0, AsCudaStream(stream)>>>(
      logits, vocab, tokens, logprobs);
  return LaunchStatus("GreedySample");
}

absl::Status LaunchEmbedding(const void* table, ScalarType table_dtype, int64_t vocab,
                             const int32_t* ids, int64_t tokens, int64_t hidden, void* out,
                             ScalarType dtype, int32_t* error_flags, void* stream) {
  return DispatchFloat(table_dtype, "Embedding", [&](auto table_type) {
    using Tin = decltype(table_type);
    return DispatchFloat(dtype, "Embedding", [&](auto out_type) {
      using Tout = decltype(out_type);
      EmbeddingKernel<Tin, Tout><<<Blocks(tokens * hidden), kThreads, 0, AsCudaStream(stream)>>>(
          static_cast<const Tin*>(table), vocab, ids, tokens, hidden, static_cast<Tout*>(out),
          error_flags);
      return LaunchStatus("EmbeddingKernel");
    });
  });
}

absl::Status LaunchRmsNorm(const void* x, const float* weight, float eps, int64_t rows,
                           int64_t features, void* y, ScalarType dtype, void* stream) {
  if (rows == 0) return absl::OkStatus();
  return DispatchFloat(dtype, "RmsNorm", [&](auto type) {
    using T = decltype(type);
    RmsNormKernel<T><<<static_cast<unsigned>(rows), kThreads, 0, AsCudaStream(stream)>>>(
        static_cast<const T*>(x), weight, eps, features, static_cast<T*>(y));
    return LaunchStatus("RmsNormKernel");
  });
}

absl::Status LaunchRope(void* q, int64_t q_width, void* k, int64_t k_width, int64_t tokens,
                        int64_t head_dim, const int32_t* positions, const float* inv_freq,
                        ScalarType dtype, void* stream) {
  return DispatchFloat(dtype, "Rope", [&](auto type) {
    using T = decltype(type);
    RopeKernel<T><<<Blocks(tokens * (q_width + k_width) / 2), kThreads, 0, AsCudaStream(stream)>>>(
        static_cast<T*>(q), q_width, static_cast<T*>(k), k_width, tokens, head_dim, positions,
        inv_freq);
    return LaunchStatus("RopeKernel");
  });
}

absl::Status LaunchWriteKv(const PagedKv& cache, const StepPointers& step, const void* k,
                           const void* v, ScalarType dtype, void* stream) {
  return DispatchFloat(dtype, "WriteKv", [&](auto type) {
    using T = decltype(type);
    WriteKvKernel<T>
        <<<Blocks(step.tokens * cache.num_kv_heads * cache.head_dim), kThreads, 0,
           AsCudaStream(stream)>>>(cache, step, static_cast<const T*>(k), static_cast<const T*>(v));
    return LaunchStatus("WriteKvKernel");
  });
}

absl::Status LaunchPagedAttention(const PagedKv& cache, const StepPointers& step, const void* q,
                                  int64_t num_heads, void* out, ScalarType dtype, void* stream) {
  if (cache.head_dim > kMaxHeadDim) {
    return absl::UnimplementedError(absl::StrCat("Attention: head_dim ", cache.head_dim,
                                                 " is over the CUDA kernel's ", kMaxHeadDim));
  }
  if (step.tokens == 0) return absl::OkStatus();
  return DispatchFloat(dtype, "Attention", [&](auto type) {
    using T = decltype(type);
    const dim3 grid(static_cast<unsigned>(step.tokens), static_cast<unsigned>(num_heads));
    PagedAttentionKernel<T><<<grid, kAttentionWarps * 32, 0, AsCudaStream(stream)>>>(
        cache, step, static_cast<const T*>(q), num_heads, static_cast<T*>(out));
    return LaunchStatus("PagedAttentionKernel");
  });
}

absl::Status LaunchSiluMul(const void* gate, const void* up, int64_t n, void* out, ScalarType dtype,
                           void* stream) {
  return DispatchFloat(dtype, "SiluMul", [&](auto type) {
    using T = decltype(type);
    SiluMulKernel<T><<<Blocks(n), kThreads, 0, AsCudaStream(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), n, static_cast<T*>(out));
    return LaunchStatus("SiluMulKernel");
  });
}

absl::Status LaunchAdd(void* x, const void* y, int64_t n, ScalarType dtype, void* stream) {
  return DispatchFloat(dtype, "Add", [&](auto type) {
    using T = decltype(type);
    AddKernel<T><<<Blocks(n), kThreads, 0, AsCudaStream(stream)>>>(static_cast<T*>(x),
                                                                   static_cast<const T*>(y), n);
    return LaunchStatus("AddKernel");
  });
}

absl::Status LaunchAddBias(void* y, const float* bias, int64_t rows, int64_t cols,
                           ScalarType y_dtype, void* stream) {
  return DispatchFloat(y_dtype, "AddBias", [&](auto type) {
    using T = decltype(type);
    AddBiasKernel<T><<<Blocks(rows * cols), kThreads, 0, AsCudaStream(stream)>>>(static_cast<T*>(y),
                                                                                 bias, rows, cols);
    return LaunchStatus("AddBiasKernel");
  });
}

absl::Status LaunchRoundTo(void* x, ScalarType x_dtype, int64_t n, ScalarType dtype, void* stream) {
  return DispatchFloat(x_dtype, "RoundTo", [&](auto x_type) {
    using T = decltype(x_type);
    return DispatchFloat(dtype, "RoundTo", [&](auto through_type) {
      using Through = decltype(through_type);
      RoundToKernel<T, Through>
          <<<Blocks(n), kThreads, 0, AsCudaStream(stream)>>>(static_cast<T*>(x), n);
      return LaunchStatus("RoundToKernel");
    });
  });
}

absl::Status LaunchConvert(const void* src, ScalarType src_dtype, int64_t n, void* dst,
                           ScalarType dst_dtype, void* stream) {
  return DispatchFloat(src_dtype, "Convert", [&](auto in_type) {
    using Tin = decltype(in_type);
    return DispatchFloat(dst_dtype, "Convert", [&](auto out_type) {
      using Tout = decltype(out_type);
      ConvertKernel<Tin, Tout><<<Blocks(n), kThreads, 0, AsCudaStream(stream)>>>(
          static_cast<const Tin*>(src), n, static_cast<Tout*>(dst));
      return LaunchStatus("ConvertKernel");
    });
  });
}

absl::Status LaunchGatherRows(const void* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows,
                              int64_t count, void* out, int32_t* error_flags, void* stream) {
  GatherRowsKernel<<<Blocks(count * row_bytes), kThreads, 0, AsCudaStream(stream)>>>(
      static_cast<const uint8_t*>(x), x_rows, row_bytes, rows, count, static_cast<uint8_t*>(out),
      error_flags);
  return LaunchStatus("GatherRowsKernel");
}

}  // namespace kbitd::runtime::cuda
