// tokenizer.json "pre_tokenizer": splits normalized text into the pieces the model encodes one
// by one. Supported: Sequence, Split (String or Regex pattern, all five delimiter behaviours,
// invert), ByteLevel (GPT-2 regex, add_prefix_space, use_regex; maps bytes to the GPT-2 byte
// alphabet), Metaspace (replacement, prepend_scheme always/first/never or the older
// add_prefix_space, split), Digits, Punctuation, Whitespace and WhitespaceSplit (Whitespace's \w
// uses IsWordChar's approximation of Rust's Unicode \w). Others are rejected naming the field.
// Semantics follow tokenizers/src/pre_tokenizers/ and NormalizedString::split. Thread-safe: const
// after creation.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"
#include "runtime/tokenizer/text_pattern.h"

namespace kbitd::runtime {

// A piece of text on its way through pre-tokenization. `at_start` tells whether it begins at
// offset 0 of the original input (Metaspace's prepend_scheme "first" looks at it).
struct PrePiece {
  std::string text;
  bool at_start = false;
};

// GPT-2's reversible byte -> printable code point map (openai/gpt-2 encoder.py bytes_to_unicode).
const std::array<char32_t, 256>& ByteLevelAlphabet();

class PreTokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const JsonValue& json,
                                                                std::string_view path);
  // Replaces `pieces` with their pre-tokenized pieces (empty pieces are dropped).
  void Apply(std::vector<PrePiece>& pieces) const;

  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

 private:
  struct Stage {
    enum Kind { kSplit, kByteLevel, kMetaspace } kind;
    std::optional<TextPattern> pattern;  // kSplit
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // kByteLevel
    bool use_regex = true;          // kByteLevel
    std::string replacement;        // kMetaspace
    enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
    bool split = true;  // kMetaspace
  };
  absl::Status Add(const JsonValue& json, std::string_view path);
  void ApplyStage(const Stage& stage, const PrePiece& piece, std::vector<PrePiece>& out) const;

  std::vector<Stage> stages_;
};

}  // namespace kbitd::runtime
