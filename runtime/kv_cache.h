// Paged KV cache (the vLLM PagedAttention layout, Kwon et al. 2023): keys and values live in
// fixed-size blocks of `block_size` token slots; each sequence owns a block table (logical block
// -> physical block) and free blocks sit in a free list. float32 storage, per layer
// [num_blocks, block_size, num_kv_heads, head_dim] for K and for V. Not thread-safe (the engine
// thread owns it); backends read and write slots concurrently within one step.
#pragma once

#include <cstdint>
#include <memory>
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
  };
  // Allocates all blocks up front from `pool` (category kv_cache, owner `owner`).
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const Options& options, MemoryPool& pool,
                                                         const std::string& owner);

  int64_t block_size() const { return options_.block_size; }
  int64_t num_blocks() const { return options_.num_blocks; }
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

  // Pointers to the [num_kv_heads, head_dim] slot of token `position` of a block table.
  float* KeySlot(int64_t layer, const std::vector<int32_t>& table, int64_t position) const {
    return Slot(keys_, layer, table, position);
  }
  float* ValueSlot(int64_t layer, const std::vector<int32_t>& table, int64_t position) const {
    return Slot(values_, layer, table, position);
  }
  int64_t slot_floats() const { return options_.num_kv_heads * options_.head_dim; }

 private:
  KvCache(const Options& options, Buffer keys, Buffer values);
  float* Slot(const Buffer& buffer, int64_t layer, const std::vector<int32_t>& table,
              int64_t position) const {
    int64_t block = table[position / options_.block_size];
    int64_t offset = position % options_.block_size;
    return buffer.as<float>() +
           ((layer * options_.num_blocks + block) * options_.block_size + offset) * slot_floats();
  }

  Options options_;
  Buffer keys_;
  Buffer values_;
  std::vector<int32_t> free_;  // LIFO free list of physical blocks
  std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

}  // namespace kbitd::runtime
