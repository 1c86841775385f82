// The regular-expression subset that tokenizer.json split patterns use (GPT-2, Llama 3, Qwen2,
// DeepSeek style), matched the way Oniguruma does for Hugging Face `tokenizers`: a backtracking
// matcher with leftmost-first alternation over Unicode code points.
//
// Supported: literals, '.', alternation, (?:...), (...), (?i:...), (?i), (?=...), (?!...),
// greedy and lazy * + ? {n} {n,} {n,m}, ^ $ \A \z, classes [...] with ranges and negation, and
// the escapes \s \S \d \D \w \W \p{..} \P{..} (general categories, e.g. L, Lu, N, Nd, M, P, S, Z,
// C) \r \n \t \f \v \xHH \x{H..} \uHHHH. Anything else (backreferences, lookbehind, possessive
// quantifiers, scripts, nested classes) is rejected by Compile with an error naming it.
// Case-insensitive matching folds ASCII letters plus U+017F (ſ) and U+212A (Kelvin sign), as
// Unicode simple case folding does. Thread-safe after Compile (matching is const).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/unicode/unicode_tables.h"

namespace kbitd::runtime {

class SplitRegex {
 public:
  // Byte range [first, second) of a match in the searched text.
  using Match = std::pair<size_t, size_t>;

  static absl::StatusOr<SplitRegex> Compile(std::string_view pattern);

  // All successive non-overlapping matches in `text` (valid UTF-8), as Oniguruma's search loop
  // finds them: each search starts where the previous match ended (one code point later after
  // an empty match). Appends to `out`.
  void FindAll(std::string_view text, std::vector<Match>& out) const;

  const std::string& pattern() const { return pattern_; }

  // A character class: the union of its items, then optionally negated.
  struct CharClass {
    bool negate = false;
    bool fold = false;  // case-insensitive (ASCII + fold extras)
    std::vector<std::pair<char32_t, char32_t>> ranges;
    CategoryMask categories = 0;            // \p{..}
    CategoryMask not_categories = 0;        // \P{..}: matches when category not in mask
    bool space = false, not_space = false;  // \s, \S
    bool word = false, not_word = false;    // \w, \W
    uint64_t ascii[2] = {0, 0};             // precomputed result for code points < 128
    bool Matches(char32_t cp) const;
    bool MatchesSlow(char32_t cp) const;
  };

  enum class Op : uint8_t { kChar, kClass, kAny, kSplit, kJmp, kMatch, kLook, kBegin, kEnd };
  struct Inst {
    Op op;
    bool flag = false;  // kChar: case-insensitive; kLook: negative
    char32_t cp = 0;    // kChar
    int x = 0;          // kClass: class index; kSplit: preferred target; kJmp/kLook: target
    int y = 0;          // kSplit: alternative target
  };

 private:
  SplitRegex() = default;
  // Runs the program from pc at code point index pos; returns the end index or -1.
  long Run(int pc, size_t pos, const std::vector<char32_t>& cps,
           std::vector<std::pair<int, size_t>>& stack) const;

  std::string pattern_;
  std::vector<Inst> program_;
  std::vector<CharClass> classes_;
  friend class SplitRegexCompiler;
};

}  // namespace kbitd::runtime
