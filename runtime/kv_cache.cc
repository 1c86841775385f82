#include "runtime/kv_cache.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const Options& options, MemoryPool& pool,
                                                         const std::string& owner) {
  if (options.num_layers <= 0 || options.num_kv_heads <= 0 || options.head_dim <= 0 ||
      options.block_size <= 0 || options.num_blocks <= 0 || options.num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layers, kv heads, head_dim, block_size and num_blocks must be positive (got ",
        options.num_layers, ", ", options.num_kv_heads, ", ", options.head_dim, ", ",
        options.block_size, ", ", options.num_blocks, ")"));
  }
  size_t bytes = static_cast<size_t>(options.num_layers * options.num_blocks * options.block_size *
                                     options.num_kv_heads * options.head_dim) *
                 sizeof(float);
  KBITD_ASSIGN_OR_RETURN(Buffer keys, pool.Allocate(bytes, MemoryCategory::kKvCache, owner));
  KBITD_ASSIGN_OR_RETURN(Buffer values, pool.Allocate(bytes, MemoryCategory::kKvCache, owner));
  return std::unique_ptr<KvCache>(new KvCache(options, std::move(keys), std::move(values)));
}

KvCache::KvCache(const Options& options, Buffer keys, Buffer values)
    : options_(options), keys_(std::move(keys)), values_(std::move(values)) {
  free_.reserve(options.num_blocks);
  for (int64_t b = options.num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int64_t KvCache::AdditionalBlocksNeeded(uint64_t sequence, int64_t tokens) const {
  auto it = tables_.find(sequence);
  int64_t have = it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size());
  int64_t need = BlocksNeeded(tokens);
  return need > have ? need - have : 0;
}

absl::Status KvCache::Reserve(uint64_t sequence, int64_t tokens) {
  int64_t extra = AdditionalBlocksNeeded(sequence, tokens);
  if (extra > num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: sequence ", sequence, " needs ", extra, " more blocks of ", block_size(),
        " tokens for ", tokens, " tokens but only ", num_free_blocks(), " of ", num_blocks(),
        " are free"));
  }
  std::vector<int32_t>& table = tables_[sequence];
  for (int64_t i = 0; i < extra; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvCache::Free(uint64_t sequence) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) return;
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) free_.push_back(*b);
  tables_.erase(it);
}

const std::vector<int32_t>* KvCache::BlockTable(uint64_t sequence) const {
  auto it = tables_.find(sequence);
  return it == tables_.end() ? nullptr : &it->second;
}

}  // namespace kbitd::runtime
