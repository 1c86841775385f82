// Paged KV cache (the vLLM PagedAttention layout, Kwon et al. 2023): keys and values live in
// fixed-size blocks of `block_size` token slots; each sequence owns a block table (logical block
// -> physical block) and free blocks sit in a free list. One cache per device, allocated from that
// device's pool, in the dtype the backend asks for (float32 on the CPU). Per layer, K and V are
// [num_blocks, block_size, num_kv_heads, head_dim]. The block tables are kept on the host and
// exported each step as an int32 tensor [sequences, max_blocks] (FillBlockTable). Not thread-safe
// (the engine thread owns it); backends read and write slots concurrently within one step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime {

class KvCache {
 public:
  struct Options {
    int64_t num_layers = 0;
    int64_t num_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t block_size = 16;
    int64_t num_blocks = 0;
    ScalarType dtype = ScalarType::kFloat32;  // float32, float16 or bfloat16
  };
  // Allocates all blocks up front from `pool` (category kv_cache, owner `owner`), on its device.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const Options& options, MemoryPool& pool,
                                                         const std::string& owner);
  // Bytes of one block: keys and values of `block_size` tokens in every layer.
  static int64_t BlockBytes(const Options& options);

  int64_t block_size() const { return options_.block_size; }
  int64_t num_blocks() const { return options_.num_blocks; }
  int64_t bytes() const { return options_.num_blocks * BlockBytes(options_); }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t BlocksNeeded(int64_t tokens) const {
    return (tokens + options_.block_size - 1) / options_.block_size;
  }
  // Blocks `sequence` still needs to hold `tokens` tokens in total (0 if it has them).
  int64_t AdditionalBlocksNeeded(uint64_t sequence, int64_t tokens) const;

  // Grows the block table of `sequence` (created if new) to hold `tokens` tokens.
  // RESOURCE_EXHAUSTED (nothing changed) when the free list is too short.
  absl::Status Reserve(uint64_t sequence, int64_t tokens);
  void Free(uint64_t sequence);  // returns its blocks to the free list; unknown id: no-op
  const std::vector<int32_t>* BlockTable(uint64_t sequence) const;

  // Copies the block table of `sequence` into row[0, max_blocks), zero-padded; INVALID_ARGUMENT
  // for an unknown sequence or a table longer than max_blocks.
  absl::Status FillBlockTable(uint64_t sequence, int64_t max_blocks, int32_t* row) const;

  const Device& device() const { return device_; }
  ScalarType dtype() const { return options_.dtype; }
  int64_t num_layers() const { return options_.num_layers; }
  // Keys / values of `layer`: [num_blocks, block_size, num_kv_heads, head_dim] on device().
  Tensor keys(int64_t layer) const { return LayerView(keys_, layer); }
  Tensor values(int64_t layer) const { return LayerView(values_, layer); }

 private:
  KvCache(const Options& options, Buffer keys, Buffer values);
  Tensor LayerView(const Buffer& buffer, int64_t layer) const;

  Options options_;
  Device device_;
  Buffer keys_;
  Buffer values_;
  std::vector<int32_t> free_;  // LIFO free list of physical blocks
  std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

// What one engine's KV cache may take, and from what.
struct KvCacheBudget {
  int64_t bytes = 0;   // explicit size (LoadModelRequest.kv_cache_bytes); 0 = none
  int64_t tokens = 0;  // explicit size in tokens (the deprecated Config.kv_cache_tokens); 0 = none
  int64_t max_context = 0;       // tokens of one sequence
  int64_t max_batch_size = 1;    // sequences that run at once
  std::string device;            // "cpu", for messages
  int64_t available_bytes = 0;   // what the device can still give
  std::string available_source;  // where that figure comes from, for messages
};

// Share of the device's available memory the default KV cache takes. Not most of it, as vLLM's
// gpu_memory_utilization does for its one model per GPU: kbitd serves several models from one
// host, each taking a share of what the ones before left, so the caches never add up to more than
// was free. An eighth gives a 135M model with an 8192-token context on a 24 GB host about the
// 3 GB the old 8 x max_context default gave it, while nine such models now leave ~4 GB free
// where they used to exhaust the host.
inline constexpr double kDefaultKvCacheFraction = 0.125;

// The number of blocks of `shape` (num_blocks ignored) a KV cache gets:
//  - budget.bytes > 0: the whole blocks that fit in it; INVALID_ARGUMENT when they hold less than
//    one max_context sequence, since the model's advertised context could then never be reached;
//  - else budget.tokens > 0: that many tokens rounded up to whole blocks, as kv_cache_tokens
//    always meant (no minimum: configs that relied on a small cache keep working);
//  - else the default: kDefaultKvCacheFraction of available_bytes, at most max_batch_size
//    sequences of max_context tokens (more than the scheduler ever runs at once) and at least one
//    such sequence (less could not serve one full-context request).
// RESOURCE_EXHAUSTED naming the device, the bytes needed and the bytes available when the cache
// does not fit in available_bytes.
absl::StatusOr<int64_t> KvCacheBlocks(const KvCache::Options& shape, const KvCacheBudget& budget);

// Sets budget->device and the available bytes of `pool`'s device for `owner`: the host's available
// memory (runtime/host_memory.h), cut to what is left of the device's max_memory and of the
// owner's own limit (MemoryPool::LimitOwner). On a GPU, what is left of the pool's budget for
// the owner (the pool is the only user of the memory it was given).
absl::Status SetAvailableMemory(const MemoryPool& pool, const std::string& owner,
                                KvCacheBudget* budget);

}  // namespace kbitd::runtime
