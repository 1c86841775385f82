#include "server/batch_policy.h"

#include <algorithm>

namespace kbitd::server {

int64_t BlocksFor(int64_t tokens, int32_t block_size) {
  if (tokens <= 0 || block_size <= 0) return 0;
  return (tokens + block_size - 1) / block_size;
}

int64_t ReservedBlocks(absl::Span<const RunningItem> running, int32_t block_size) {
  int64_t reserved = 0;
  for (const RunningItem& item : running) {
    // The engine may lag the scheduler's count by the token sampled last (it enters the cache at
    // the next step), so count one token less as allocated: at most one block too many.
    const int64_t allocated = BlocksFor(std::max(0, item.tokens_in_cache - 1), block_size);
    reserved += std::max<int64_t>(0, BlocksFor(item.max_total_tokens, block_size) - allocated);
  }
  return reserved;
}

int32_t AdmitCount(absl::Span<const QueuedItem> queue, absl::Span<const RunningItem> running,
                   const BatchLimits& limits, const KvBudget& kv) {
  int64_t available = kv.free_blocks - ReservedBlocks(running, kv.block_size);
  int64_t slots =
      static_cast<int64_t>(limits.max_batch_size) - static_cast<int64_t>(running.size());
  int32_t admitted = 0;
  for (const QueuedItem& item : queue) {
    if (slots <= 0) break;
    const int64_t need = BlocksFor(item.max_total_tokens, kv.block_size);
    if (need > available) break;  // no overtaking: the head waits for memory
    available -= need;
    --slots;
    ++admitted;
  }
  return admitted;
}

std::vector<StepItem> PlanStep(absl::Span<const RunningItem> running, const BatchLimits& limits) {
  std::vector<StepItem> work;
  int64_t budget = limits.max_batch_tokens;
  for (const RunningItem& item : running) {
    if (item.remaining_prompt_tokens == 0 && budget > 0) {
      work.push_back({item.id, 1});
      --budget;
    }
  }
  for (const RunningItem& item : running) {
    if (item.remaining_prompt_tokens <= 0 || budget <= 0) continue;
    const int32_t chunk = static_cast<int32_t>(
        std::min<int64_t>({item.remaining_prompt_tokens, limits.prefill_chunk_tokens, budget}));
    work.push_back({item.id, chunk});
    budget -= chunk;
  }
  return work;
}

}  // namespace kbitd::server
