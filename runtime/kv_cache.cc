#include "runtime/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/host_memory.h"

namespace kbitd::runtime {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const Options& options, MemoryPool& pool,
                                                         const std::string& owner) {
  if (options.dtype != ScalarType::kFloat32 && options.dtype != ScalarType::kFloat16 &&
      options.dtype != ScalarType::kBFloat16) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype ",
                                                   std::string(TorchDtypeName(options.dtype)),
                                                   " is not float32, float16 or bfloat16"));
  }
  if (options.num_layers <= 0 || options.num_kv_heads <= 0 || options.head_dim <= 0 ||
      options.block_size <= 0 || options.num_blocks <= 0 || options.num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layers, kv heads, head_dim, block_size and num_blocks must be positive (got ",
        options.num_layers, ", ", options.num_kv_heads, ", ", options.head_dim, ", ",
        options.block_size, ", ", options.num_blocks, ")"));
  }
  // Keys and values are one buffer each: half of the blocks' bytes.
  const size_t bytes = static_cast<size_t>(options.num_blocks * BlockBytes(options) / 2);
  KBITD_ASSIGN_OR_RETURN(Buffer keys, pool.Allocate(bytes, MemoryCategory::kKvCache, owner));
  KBITD_ASSIGN_OR_RETURN(Buffer values, pool.Allocate(bytes, MemoryCategory::kKvCache, owner));
  auto cache = std::unique_ptr<KvCache>(new KvCache(options, std::move(keys), std::move(values)));
  cache->device_ = pool.device();
  return cache;
}

int64_t KvCache::BlockBytes(const Options& options) {
  return 2 * options.num_layers * options.block_size * options.num_kv_heads * options.head_dim *
         static_cast<int64_t>(ScalarTypeSize(options.dtype));
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
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: sequence ", sequence, " needs ", extra, " more blocks of ",
                     block_size(), " tokens for ", tokens, " tokens but only ", num_free_blocks(),
                     " of ", num_blocks(), " are free"));
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

absl::Status KvCache::FillBlockTable(uint64_t sequence, int64_t max_blocks, int32_t* row) const {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: unknown sequence ", sequence));
  }
  const std::vector<int32_t>& table = it->second;
  if (static_cast<int64_t>(table.size()) > max_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: sequence ", sequence, " has ",
                                                   table.size(), " blocks, more than the ",
                                                   max_blocks, " of the table"));
  }
  std::copy(table.begin(), table.end(), row);
  std::fill(row + table.size(), row + max_blocks, 0);
  return absl::OkStatus();
}

Tensor KvCache::LayerView(const Buffer& buffer, int64_t layer) const {
  const int64_t layer_elements =
      options_.num_blocks * options_.block_size * options_.num_kv_heads * options_.head_dim;
  char* base = buffer.as<char>() + layer * layer_elements * ScalarTypeSize(options_.dtype);
  return Tensor::Make(
      base, options_.dtype,
      {options_.num_blocks, options_.block_size, options_.num_kv_heads, options_.head_dim},
      device_);
}

absl::StatusOr<int64_t> KvCacheBlocks(const KvCache::Options& shape, const KvCacheBudget& budget) {
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 || shape.head_dim <= 0 ||
      shape.block_size <= 0 || budget.max_context <= 0 || budget.max_batch_size <= 0 ||
      budget.bytes < 0 || budget.tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache sizing: layers, kv heads, head_dim, block_size, max_context and max_batch_size "
        "must be positive, bytes and tokens >= 0 (got ",
        shape.num_layers, ", ", shape.num_kv_heads, ", ", shape.head_dim, ", ", shape.block_size,
        ", ", budget.max_context, ", ", budget.max_batch_size, ", ", budget.bytes, ", ",
        budget.tokens, ")"));
  }
  const int64_t block_bytes = KvCache::BlockBytes(shape);
  const int64_t sequence_blocks = (budget.max_context + shape.block_size - 1) / shape.block_size;
  int64_t blocks = 0;
  std::string what;
  if (budget.bytes > 0) {
    blocks = budget.bytes / block_bytes;
    if (blocks < sequence_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_cache_bytes ", budget.bytes, " holds ", blocks * shape.block_size,
                       " tokens, less than one max_context sequence of ", budget.max_context,
                       " tokens (", sequence_blocks * block_bytes, " bytes)"));
    }
    what = absl::StrCat("kv_cache_bytes ", budget.bytes);
  } else if (budget.tokens > 0) {
    blocks = (budget.tokens + shape.block_size - 1) / shape.block_size;
    what = absl::StrCat("kv_cache_tokens ", budget.tokens);
  } else {
    const auto share =
        static_cast<int64_t>(kDefaultKvCacheFraction * static_cast<double>(budget.available_bytes));
    blocks =
        std::clamp(share / block_bytes, sequence_blocks, budget.max_batch_size * sequence_blocks);
    what = blocks == sequence_blocks
               ? absl::StrCat("the smallest KV cache, one max_context sequence of ",
                              budget.max_context, " tokens,")
               : std::string("the default KV cache");
  }
  const int64_t needed = blocks * block_bytes;
  if (needed > budget.available_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(budget.device, ": ", what, " needs ", needed, " bytes (",
                     blocks * shape.block_size, " tokens) but only ", budget.available_bytes,
                     " bytes are available (", budget.available_source, ")"));
  }
  return blocks;
}

absl::Status SetAvailableMemory(const MemoryPool& pool, const std::string& owner,
                                KvCacheBudget* budget) {
  budget->device = pool.device().ToString();
  const int64_t left = pool.owner_bytes_left(owner);
  if (!pool.device().is_cpu()) {
    // A GPU pool always has a budget (max_memory, or 90 % of the memory free at start), which
    // only kbitd allocates from: what is left of it is what the device can still give.
    if (left < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sizing a KV cache on ", budget->device, ": the device has no budget"));
    }
    budget->available_bytes = left;
    budget->available_source = absl::StrCat(
        "what is left of ", budget->device, "'s budget for ", owner, ": ", pool.used_bytes(),
        " bytes of the device in use, ", pool.owner_bytes(owner), " of them by ", owner);
    return absl::OkStatus();
  }
  KBITD_ASSIGN_OR_RETURN(HostMemory host, ReadHostMemory());
  budget->available_bytes = host.available_bytes;
  budget->available_source = host.source;
  if (left >= 0 && left < budget->available_bytes) {
    budget->available_bytes = left;
    budget->available_source = absl::StrCat(
        "what is left of max_memory for ", owner, " on ", budget->device, ": ", pool.used_bytes(),
        " bytes of the device in use, ", pool.owner_bytes(owner), " of them by ", owner);
  }
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
