// The BPE model of a Hugging Face tokenizer.json ("model": {"type": "BPE", ...}): vocabulary,
// ranked merges, unk token, byte fallback (<0xXX> tokens), continuing_subword_prefix,
// end_of_word_suffix, fuse_unk and ignore_merges, applied to one pre-tokenized piece exactly as
// `tokenizers` does (tokenizers/src/models/bpe/{model.rs,word.rs}: lowest merge rank first,
// leftmost on ties). Dropout is rejected (it makes encoding random). Thread-safe: const after
// creation; results of short pieces are memoized in a bounded cache guarded by a mutex (as
// tokenizers caches words).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/json.h"

namespace kbitd::runtime {

class BpeModel {
 public:
  // `model` is tokenizer.json's "model" object.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const JsonValue& model);

  // Appends the ids of one piece (non-empty, valid UTF-8).
  absl::Status Tokenize(std::string_view piece, std::vector<int32_t>& ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // One more than the largest id in the vocabulary.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  BpeModel() = default;
  absl::Status Build(const JsonValue& model);
  absl::Status AddMerge(std::string_view left, std::string_view right, size_t rank);
  // Initial symbols of a piece: one per character (or per byte with byte fallback, or unk).
  void InitialSymbols(std::string_view piece, std::vector<int32_t>& symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  // (left id << 32 | right id) -> (rank, merged id).
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // <0xXX> token ids, -1 when absent

  // Memoized results for pieces up to kMaxCachedPiece bytes; stops growing at kCacheCapacity.
  static constexpr size_t kMaxCachedPiece = 64;
  static constexpr size_t kCacheCapacity = 10000;
  absl::Status TokenizeUncached(std::string_view piece, std::vector<int32_t>& ids) const;
  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace kbitd::runtime
