// tokenizer.json "normalizer": the subset LLM tokenizers use — Sequence, Prepend (Llama 2's "▁"),
// Replace with a String or Regex pattern, Strip, NFC (Qwen2) and NFD. NFKC/NFKD, Lowercase,
// BertNormalizer and Precompiled are rejected with an error naming the field.
// Semantics follow tokenizers/src/normalizers/ (Prepend only touches non-empty strings).
// Thread-safe: const after creation.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"
#include "runtime/tokenizer/text_pattern.h"

namespace kbitd::runtime {

class Normalizer {
 public:
  // `path` names the JSON field for errors (e.g. "normalizer").
  static absl::StatusOr<std::unique_ptr<Normalizer>> FromJson(const JsonValue& json,
                                                              std::string_view path);
  std::string Normalize(std::string_view text) const;

 private:
  struct Step {
    enum Kind { kPrepend, kReplace, kStrip, kNfc, kNfd } kind;
    std::string content;                 // kPrepend: prefix; kReplace: replacement
    std::optional<TextPattern> pattern;  // kReplace
    bool strip_left = false, strip_right = false;
  };
  absl::Status Add(const JsonValue& json, std::string_view path);
  std::vector<Step> steps_;
};

}  // namespace kbitd::runtime
