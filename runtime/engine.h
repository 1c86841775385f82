// Runs a loaded Model on its device's backend: owns its paged KV cache (from the device's pool)
// and the per-sequence state (tokens, sampling parameters, RNG counter). Step() runs prefill chunks
// and decode tokens of different sequences together in one batched forward, then samples. Not
// thread-safe: one scheduler thread drives an Engine (the Model itself may be shared).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/kernel_observer.h"
#include "runtime/model.h"
#include "runtime/sampling_params.h"

namespace kbitd::runtime {

// Tokens of one sequence to run in this step: a prefill chunk (num_tokens >= 1 of its remaining
// prompt) or one decode token (num_tokens == 1, the last sampled token).
struct SequenceWork {
  uint64_t sequence_id;
  int32_t num_tokens;
};

struct SampledToken {
  uint64_t sequence_id;
  int32_t token;
  float logprob;                  // log-softmax of the chosen token (after temperature/penalty)
  std::vector<TokenLogprob> top;  // top_logprobs alternatives, best first
};

class Engine {
 public:
  struct Options {
    int32_t kv_block_size = 16;  // tokens per KV block
    // KV cache size, allocated up front; the rule is KvCacheBlocks' (runtime/kv_cache.h): these
    // bytes when > 0, else these tokens (deprecated) when > 0, else a share of the free memory of
    // the model's device between one and max_batch_size max_context sequences.
    int64_t kv_cache_bytes = 0;
    int64_t kv_cache_tokens = 0;
    int32_t max_batch_size = 64;  // sequences the scheduler runs at once (limits.max_batch_size)
    int32_t max_context = 0;      // tokens per sequence; 0 = config max_position_embeddings
                                  // (capped by sliding_window)
    // Kernel latency sampling: with an observer (not owned; must outlive the engine), the kernels
    // of the first step and of every kernel_timing_interval-th step after it are timed and
    // reported; the other steps read no clock. 16 keeps the cost negligible while a few steps a
    // second still fill the histograms; 1 times every step.
    KernelObserver* kernel_observer = nullptr;
    int32_t kernel_timing_interval = 16;
    // Keep each sampled row's raw logits for LastLogits (tests, golden comparisons). Off, a step
    // whose sequences are all plain greedy (temperature 0, no repetition penalty, no top
    // logprobs) samples on the device and copies 8 bytes a row instead of the vocabulary.
    bool keep_last_logits = false;
  };
  // RESOURCE_EXHAUSTED (naming the device, bytes needed and available) when the KV cache does not
  // fit; INVALID_ARGUMENT for bad options or kv_cache_bytes below one max_context sequence.
  // `backend` is the backend of the model's device (DeviceSet::BackendFor(model->device())),
  // shared with the other engines there; it must outlive the engine. INVALID_ARGUMENT when it
  // runs on another device.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        Backend& backend, const Options& options);
  ~Engine();

  const Model& model() const;
  int32_t max_context() const;  // tokens per sequence (prompt + generated)
  int32_t kv_block_size() const;
  int64_t kv_blocks_total() const;
  int64_t kv_blocks_free() const;
  int64_t kv_cache_bytes() const;   // keys and values, all layers and blocks
  int64_t kv_cache_tokens() const;  // blocks * block size
  int64_t KvBlocksNeeded(int64_t tokens) const;

  // Registers a sequence and reserves KV blocks for its prompt. RESOURCE_EXHAUSTED if the blocks
  // are not free; INVALID_ARGUMENT for an empty or too-long prompt, a token id outside the
  // vocabulary, bad sampling params or a duplicate id.
  absl::Status AddSequence(uint64_t id, std::vector<int32_t> prompt_tokens,
                           const SamplingParams& params);
  void RemoveSequence(uint64_t id);  // frees its KV blocks; unknown id is a no-op
  bool HasSequence(uint64_t id) const;
  int32_t RemainingPromptTokens(uint64_t id) const;  // 0 for unknown ids
  int32_t SequenceLength(uint64_t id) const;         // tokens held (prompt + sampled); 0 unknown

  // One batched forward over all work items (prefill chunks and decode tokens together), then
  // samples one token for every sequence whose prompt is fully processed after this step; the
  // sampled token is appended to the sequence (it is the input of its next decode step).
  // INVALID_ARGUMENT for unknown ids, a sequence listed twice, num_tokens < 1 or more than its
  // remaining prompt (or != 1 for decode), or a sequence at max_context; RESOURCE_EXHAUSTED when
  // a decode token needs a new KV block and none is free (nothing is changed then).
  absl::StatusOr<std::vector<SampledToken>> Step(const std::vector<SequenceWork>& work);

  // Raw logits of the last Step for `id` (float32 [vocab], before sampling transforms); empty if
  // it was not sampled in the last step or Options.keep_last_logits is off. For tests and the
  // golden comparisons.
  const std::vector<float>& LastLogits(uint64_t id) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbitd::runtime
