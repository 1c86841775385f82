// The decoder-only transformer forward of llama, mistral and qwen2 (transformers
// modeling_llama.py / modeling_mistral.py / modeling_qwen2.py), written once against Backend:
// embed -> N x [RMSNorm, q/k/v proj (+bias), RoPE, paged causal GQA attention, o_proj, residual,
// RMSNorm, SwiGLU MLP, residual] -> RMSNorm -> lm_head on the rows whose logits are wanted.
// Tokens of several sequences (prefill chunks and decode tokens) run in one flattened batch.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/backend.h"
#include "runtime/kernel_observer.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"

namespace kbitd::runtime {

struct ForwardBatch {
  std::vector<int32_t> tokens;      // [T] flattened over sequences
  AttentionBatch attention;         // position and block table of each token
  std::vector<int32_t> logit_rows;  // rows of the batch whose logits are returned
};

// RoPE inverse frequencies (head_dim / 2 entries) with rope_scaling applied (transformers
// modeling_rope_utils: _compute_default_rope_parameters, linear, _compute_llama3_parameters).
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

// Not thread-safe: owned by one engine. Scratch activations come from the model's host pool
// (category workspace) and grow with the largest batch seen.
class LlamaForward {
 public:
  LlamaForward(const Model& model, Backend& backend);

  // Writes K/V of every token into `cache` and returns float32 logits
  // [logit_rows.size(), vocab] in `logits`. With an `observer` (a sampled step) every backend
  // call is timed and reported to it.
  absl::Status Run(const ForwardBatch& batch, KvCache& cache, std::vector<float>* logits,
                   KernelObserver* observer = nullptr);

 private:
  // backend_.Linear, timed as a quantized or dense matmul by the weight's format.
  absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y,
                      KernelObserver* observer);
  absl::Status EnsureWorkspace(int64_t tokens, int64_t logit_rows);
  float* Slice(int64_t offset_floats) const { return workspace_.as<float>() + offset_floats; }

  const Model& model_;
  Backend& backend_;
  std::vector<float> inv_freq_;
  Buffer workspace_;
  int64_t capacity_tokens_ = 0;
  int64_t capacity_rows_ = 0;
};

}  // namespace kbitd::runtime
