// The scheduler's decisions as pure functions, so they are tested with no threads, clocks or
// engine (TF Serving's puppet scheduler and TRT-LLM's capacity scheduler split the same way).
// Admission is first come, first served without overtaking, and reserves KV blocks for a
// request's whole budget (prompt + max_new_tokens) so a running sequence never runs out of KV
// mid-decode. A step takes one decode token from every sequence past its prompt, then fills the
// rest of the token budget with prompt chunks in admission order (chunked prefill, as vLLM V1
// and TGI v3 interleave prefill with decode).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace kbitd::server {

struct BatchLimits {
  int32_t max_batch_tokens = 2048;     // tokens (prefill + decode) in one step
  int32_t max_batch_size = 64;         // sequences in one step
  int32_t prefill_chunk_tokens = 512;  // prompt tokens of one sequence in one step
};

struct KvBudget {
  int64_t free_blocks = 0;  // blocks not allocated to any sequence now
  int32_t block_size = 16;  // tokens per block
};

// A request waiting in the queue.
struct QueuedItem {
  int32_t prompt_tokens = 0;
  int32_t max_total_tokens = 0;  // prompt + max_new_tokens, capped at the context
};

// A sequence in the running batch.
struct RunningItem {
  uint64_t id = 0;
  int32_t remaining_prompt_tokens = 0;  // > 0 while prefilling
  int32_t tokens_in_cache = 0;          // prompt tokens processed + tokens generated
  int32_t max_total_tokens = 0;         // prompt + max_new_tokens, capped at the context
};

// Work of one sequence in the next step.
struct StepItem {
  uint64_t id = 0;
  int32_t num_tokens = 0;
  friend bool operator==(const StepItem&, const StepItem&) = default;
};

// KV blocks `tokens` tokens occupy.
int64_t BlocksFor(int64_t tokens, int32_t block_size);

// KV blocks the running sequences may still allocate before they finish.
int64_t ReservedBlocks(absl::Span<const RunningItem> running, int32_t block_size);

// How many requests from the head of `queue` may join the batch now.
int32_t AdmitCount(absl::Span<const QueuedItem> queue, absl::Span<const RunningItem> running,
                   const BatchLimits& limits, const KvBudget& kv);

// The next step's work: a decode token for each sequence past its prompt, then prompt chunks.
std::vector<StepItem> PlanStep(absl::Span<const RunningItem> running, const BatchLimits& limits);

}  // namespace kbitd::server
