// The kernels one device runs. The transformer forward (llama_forward.h) is written once against
// this interface; the CPU backend (cpu/cpu_backend.h) implements it now and a CUDA backend slots in
// later. Activations are float32 2-D tensors [tokens, features] on the backend's device; weights
// come from ModelWeights in their stored (possibly quantized) formats.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/kv_cache.h"
#include "runtime/model_weights.h"
#include "runtime/tensor.h"

namespace kbitd::runtime {

// Where each token of a flattened batch sits: its sequence's block table and its position.
struct AttentionBatch {
  std::vector<int32_t> positions;                   // [tokens]
  std::vector<const std::vector<int32_t>*> tables;  // [tokens] block table of its sequence
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const Device& device() const = 0;

  // out[t, :] = embed_tokens[tokens[t], :] as float32.
  virtual void Embedding(const ModelWeights& weights, const int32_t* tokens, Tensor out) = 0;
  // y[m, out] = x[m, in] W^T + bias for every LinearWeight format (dense, NF4/FP4 with or without
  // double quant, LLM.int8 with outlier decomposition).
  virtual absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y) = 0;
  // y = x / sqrt(mean(x^2) + eps) * weight (transformers LlamaRMSNorm, float32).
  virtual void RmsNorm(const Tensor& x, const float* weight, float eps, Tensor y) = 0;
  // Rotates q [m, heads*head_dim] and k [m, kv_heads*head_dim] in place by position (rotate_half
  // convention of transformers' apply_rotary_pos_emb). inv_freq has head_dim/2 entries.
  virtual void Rope(Tensor q, Tensor k, int64_t head_dim, const int32_t* positions,
                    const std::vector<float>& inv_freq) = 0;
  // Stores k/v rows of every token into its KV slot for `layer`.
  virtual void WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                       const AttentionBatch& batch) = 0;
  // Causal attention of each token over its own sequence's positions [0, position], GQA heads.
  virtual void Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                         const AttentionBatch& batch, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, Tensor out) = 0;
  // out = silu(gate) * up.
  virtual void SiluMul(const Tensor& gate, const Tensor& up, Tensor out) = 0;
  // x += y (residual).
  virtual void Add(Tensor x, const Tensor& y) = 0;
  // Rounds every element to `dtype` and back (compute-dtype emulation); no-op for float32.
  virtual void RoundTo(Tensor x, ScalarType dtype) = 0;
  // out[i, :] = x[rows[i], :].
  virtual void GatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor out) = 0;
  // Sampling helper: copies a float32 tensor to host memory.
  virtual void CopyToHost(const Tensor& x, float* host) = 0;
};

}  // namespace kbitd::runtime
