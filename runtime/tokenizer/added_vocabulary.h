// tokenizer.json "added_tokens": tokens matched in the input before anything else runs, as
// tokenizers/src/tokenizer/added_vocabulary.rs does. Non-normalized tokens are searched in the
// raw text, normalized ones in each normalized piece (their patterns are their normalized
// contents). Matching is leftmost-longest; single_word, lstrip and rstrip adjust or discard a
// match the same way. Thread-safe: const after creation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/json.h"

namespace kbitd::runtime {

class Normalizer;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
  // What the token decodes to: the content, normalized when `normalized` is set (tokenizers'
  // id_to_token returns the normalized content of such tokens).
  std::string decoded;
};

class AddedVocabulary {
 public:
  // A run of text: either an added token or a plain [begin, end) byte range of the input.
  struct Segment {
    std::optional<int32_t> id;
    size_t begin = 0, end = 0;
  };

  // `normalizer` (may be null) turns normalized tokens' contents into their search patterns.
  static absl::StatusOr<std::unique_ptr<AddedVocabulary>> FromJson(const JsonValue* added_tokens,
                                                                   const Normalizer* normalizer);

  // Splits text into added tokens and plain runs; `normalized` picks the normalized set.
  void Split(std::string_view text, bool normalized, std::vector<Segment>& out) const;

  const AddedToken* FindById(int32_t id) const;
  std::optional<int32_t> FindByContent(std::string_view content) const;
  bool IsSpecialContent(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie of token patterns for leftmost-longest search.
  struct Trie {
    struct Node {
      absl::flat_hash_map<unsigned char, int> next;
      int token = -1;  // index into tokens_
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    void Insert(std::string_view pattern, int token);
    // Longest pattern starting at text[pos]: returns its token index and sets `end`, or -1.
    int LongestAt(std::string_view text, size_t pos, size_t& end) const;
  };

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> by_id_;
  absl::flat_hash_map<std::string, size_t> by_content_;
  Trie raw_trie_, normalized_trie_;
};

}  // namespace kbitd::runtime
