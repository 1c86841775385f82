// The decoder-only transformer forward of llama, mistral and qwen2 (transformers
// modeling_llama.py / modeling_mistral.py / modeling_qwen2.py), written once against Backend:
// embed -> N x [RMSNorm, q/k/v proj (+bias), RoPE, paged causal GQA attention, o_proj, residual,
// RMSNorm, SwiGLU MLP, residual] -> RMSNorm -> lm_head on the rows whose logits are wanted.
// Tokens of several sequences (prefill chunks and decode tokens) run in one flattened batch.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "runtime/backend.h"
#include "runtime/kernel_observer.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"

namespace kbitd::runtime {

// One step's batch on the host, as the engine builds it: T tokens of S sequences, flattened.
struct ForwardBatch {
  std::vector<int32_t> tokens;          // [T]
  std::vector<int32_t> positions;       // [T] position of each token in its sequence
  std::vector<int32_t> token_sequence;  // [T] row of the token's sequence in block_tables
  std::vector<int32_t> block_tables;    // [S * max_blocks] each sequence's KV block table, padded
  int64_t max_blocks = 0;               // columns of block_tables
  std::vector<int32_t> logit_rows;      // rows of the batch whose logits are returned
  // Sample every logit row greedily on the device (Backend::GreedySample) and return only its
  // token and logprob: a decode step then moves 8 bytes a row to the host, not the vocabulary.
  bool greedy = false;
  int64_t num_sequences() const {
    return max_blocks > 0 ? static_cast<int64_t>(block_tables.size()) / max_blocks : 0;
  }
};

// What a step returns, row by row of ForwardBatch::logit_rows.
struct ForwardOutput {
  std::vector<float> logits;    // float32 [rows, vocab]; empty for a greedy batch
  std::vector<int32_t> tokens;  // greedy batch: the chosen token of each row
  std::vector<float> logprobs;  // greedy batch: its log-softmax
};

// RoPE inverse frequencies (head_dim / 2 entries) with rope_scaling applied (transformers
// modeling_rope_utils: _compute_default_rope_parameters, linear, _compute_llama3_parameters).
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

// Not thread-safe: owned by one engine and run by its device's worker. Activations, step inputs
// and logits live in one workspace buffer from the model's device pool (category workspace),
// laid out in bytes with the backend's activation dtype; it grows with the largest batch seen.
class LlamaForward {
 public:
  // `backend` runs on the model's device; it must outlive the forward. Prepares the per-model
  // constants (RoPE inverse frequencies) on the device.
  static absl::StatusOr<std::unique_ptr<LlamaForward>> Create(const Model& model, Backend& backend);
  ~LlamaForward();

  // Writes K/V of every token into `cache` and returns float32 logits [logit_rows.size(), vocab]
  // in `out->logits`, or for a greedy batch each row's token and logprob (copied to the host:
  // the step's one sync point). With an `observer` (a sampled step) every backend call is timed
  // and reported to it.
  absl::Status Run(const ForwardBatch& batch, KvCache& cache, ForwardOutput* out,
                   KernelObserver* observer = nullptr);

 private:
  struct Layout;
  LlamaForward(const Model& model, Backend& backend);
  // backend_.Linear, timed as a quantized or dense matmul by the weight's format.
  absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y,
                      KernelObserver* observer);
  absl::Status EnsureWorkspace(const ForwardBatch& batch);

  const Model& model_;
  Backend& backend_;
  ScalarType activation_dtype_;
  Buffer constants_;  // inv_freq on the device
  Tensor inv_freq_;
  Buffer workspace_;
  std::unique_ptr<Layout> layout_;
};

}  // namespace kbitd::runtime
