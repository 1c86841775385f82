// A tokenizer.json pattern ({"String": ...} or {"Regex": ...}) ready to search text: the literal
// kind finds non-overlapping occurrences left to right, the regex kind uses SplitRegex.
// Thread-safe: const after creation.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer_json.h"
#include "runtime/tokenizer/unicode/split_regex.h"

namespace kbitd::runtime {

class TextPattern {
 public:
  static absl::StatusOr<TextPattern> Create(const tokenizer_json::Pattern& pattern,
                                            std::string_view path);
  void FindAll(std::string_view text, std::vector<SplitRegex::Match>& out) const;

 private:
  std::string literal_;
  std::optional<SplitRegex> regex_;
};

}  // namespace kbitd::runtime
