#include "runtime/tokenizer/pre_tokenizer.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

namespace {

// The GPT-2 pre-tokenization regex that ByteLevel uses when use_regex is true
// (tokenizers/src/pre_tokenizers/byte_level.rs).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const TextPattern& Gpt2Pattern() {
  static const TextPattern* pattern = [] {
    auto p = TextPattern::Create({true, std::string(kGpt2Pattern)}, "ByteLevel");
    return new TextPattern(*std::move(p));  // the constant pattern always compiles
  }();
  return *pattern;
}

// Splits `text` at the pattern's matches with one of tokenizers' SplitDelimiterBehavior rules;
// returns [begin, end) ranges of the kept pieces.
void SplitRanges(std::string_view text, const TextPattern& pattern, PreTokenizer::Behavior behavior,
                 bool invert, std::vector<std::pair<size_t, size_t>>& out) {
  std::vector<SplitRegex::Match> found;
  pattern.FindAll(text, found);
  // Every byte of text covered by (range, is_match) in order.
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;
  size_t prev = 0;
  for (const auto& [a, b] : found) {
    if (a > prev) parts.push_back({{prev, a}, false});
    parts.push_back({{a, b}, true});
    prev = b;
  }
  if (prev < text.size()) parts.push_back({{prev, text.size()}, false});
  if (invert) {
    for (auto& p : parts) p.second = !p.second;
  }
  using B = PreTokenizer::Behavior;
  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case B::kRemoved:
      for (const auto& [r, m] : parts) {
        if (!m) ranges.push_back(r);
      }
      break;
    case B::kIsolated:
      for (const auto& [r, m] : parts) ranges.push_back(r);
      break;
    case B::kContiguous: {
      bool previous = false;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (i > 0 && parts[i].second == previous) {
          ranges.back().second = parts[i].first.second;
        } else {
          ranges.push_back(parts[i].first);
        }
        previous = parts[i].second;
      }
      break;
    }
    case B::kMergedWithPrevious: {
      bool previous = false;
      for (const auto& [r, m] : parts) {
        if (m && !previous && !ranges.empty()) {
          ranges.back().second = r.second;
        } else {
          ranges.push_back(r);
        }
        previous = m;
      }
      break;
    }
    case B::kMergedWithNext: {
      bool previous = false;
      for (size_t i = parts.size(); i-- > 0;) {
        const auto& [r, m] = parts[i];
        if (m && !previous && !ranges.empty()) {
          ranges.back().first = r.first;
        } else {
          ranges.push_back(r);
        }
        previous = m;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
  }
  for (const auto& r : ranges) {
    if (r.second > r.first) out.push_back(r);
  }
}

absl::StatusOr<PreTokenizer::Behavior> ParseBehavior(const std::string& name,
                                                     std::string_view path) {
  using B = PreTokenizer::Behavior;
  static constexpr std::pair<std::string_view, B> kBehaviors[] = {
      {"Removed", B::kRemoved},
      {"Isolated", B::kIsolated},
      {"MergedWithPrevious", B::kMergedWithPrevious},
      {"MergedWithNext", B::kMergedWithNext},
      {"Contiguous", B::kContiguous}};
  for (const auto& [key, value] : kBehaviors) {
    if (name == key) return value;
  }
  return tj::FieldError(tj::Child(path, "behavior"),
                        absl::StrCat("unknown split behavior \"", name, "\""));
}

}  // namespace

const std::array<char32_t, 256>& ByteLevelAlphabet() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const JsonValue& json,
                                                                     std::string_view path) {
  std::unique_ptr<PreTokenizer> p(new PreTokenizer());
  KBITD_RETURN_IF_ERROR(p->Add(json, path));
  return p;
}

absl::Status PreTokenizer::Add(const JsonValue& json, std::string_view path) {
  KBITD_ASSIGN_OR_RETURN(std::string type, tj::TypeOf(json, path));
  Stage stage;
  if (type == "Sequence") {
    KBITD_ASSIGN_OR_RETURN(const JsonValue::Array* items, tj::Array(json, "pretokenizers", path));
    for (size_t i = 0; i < items->size(); ++i) {
      KBITD_RETURN_IF_ERROR(Add((*items)[i], tj::Index(tj::Child(path, "pretokenizers"), i)));
    }
    return absl::OkStatus();
  } else if (type == "Split") {
    stage.kind = Stage::kSplit;
    KBITD_ASSIGN_OR_RETURN(tj::Pattern pattern, tj::ReadPattern(json, path));
    KBITD_ASSIGN_OR_RETURN(stage.pattern, TextPattern::Create(pattern, path));
    KBITD_ASSIGN_OR_RETURN(std::string behavior, tj::String(json, "behavior", path, ""));
    KBITD_ASSIGN_OR_RETURN(stage.behavior, ParseBehavior(behavior, path));
    KBITD_ASSIGN_OR_RETURN(stage.invert, tj::Bool(json, "invert", path, false));
  } else if (type == "Digits" || type == "Punctuation" || type == "Whitespace" ||
             type == "WhitespaceSplit") {
    // Character-class splitters of tokenizers/src/pre_tokenizers/{digits,punctuation,
    // whitespace}.rs, expressed as Split stages with the same matches and behaviour.
    stage.kind = Stage::kSplit;
    std::string regex;
    if (type == "Digits") {
      KBITD_ASSIGN_OR_RETURN(bool individual, tj::Bool(json, "individual_digits", path, false));
      regex = R"(\p{N})";  // char::is_numeric
      stage.behavior = individual ? Behavior::kIsolated : Behavior::kContiguous;
    } else if (type == "Punctuation") {
      regex = R"([\p{P}!-/:-@\[-`{-~])";  // is_ascii_punctuation || Unicode punctuation
      KBITD_ASSIGN_OR_RETURN(std::string behavior, tj::String(json, "behavior", path, "Isolated"));
      KBITD_ASSIGN_OR_RETURN(stage.behavior, ParseBehavior(behavior, path));
    } else if (type == "Whitespace") {
      regex = R"(\w+|[^\w\s]+)";
      stage.behavior = Behavior::kRemoved;
      stage.invert = true;  // keep the matches
    } else {
      regex = R"(\s)";  // char::is_whitespace
      stage.behavior = Behavior::kRemoved;
    }
    KBITD_ASSIGN_OR_RETURN(stage.pattern, TextPattern::Create({true, regex}, path));
  } else if (type == "ByteLevel") {
    stage.kind = Stage::kByteLevel;
    KBITD_ASSIGN_OR_RETURN(stage.add_prefix_space, tj::Bool(json, "add_prefix_space", path, true));
    KBITD_ASSIGN_OR_RETURN(stage.use_regex, tj::Bool(json, "use_regex", path, true));
  } else if (type == "Metaspace") {
    stage.kind = Stage::kMetaspace;
    KBITD_ASSIGN_OR_RETURN(stage.replacement, tj::String(json, "replacement", path, "\u2581"));
    size_t pos = 0;
    if (stage.replacement.empty() || FindInvalidUtf8(stage.replacement) ||
        (DecodeUtf8(stage.replacement, pos), pos != stage.replacement.size())) {
      return tj::FieldError(tj::Child(path, "replacement"), "must be exactly one character");
    }
    KBITD_ASSIGN_OR_RETURN(stage.split, tj::Bool(json, "split", path, true));
    KBITD_ASSIGN_OR_RETURN(stage.pattern, TextPattern::Create({false, stage.replacement}, path));
    const JsonValue* scheme = json.Find("prepend_scheme");
    if (scheme != nullptr && !scheme->is_null()) {
      KBITD_ASSIGN_OR_RETURN(std::string s, tj::String(json, "prepend_scheme", path, ""));
      if (s == "always") {
        stage.prepend = Stage::kAlways;
      } else if (s == "first") {
        stage.prepend = Stage::kFirst;
      } else if (s == "never") {
        stage.prepend = Stage::kNever;
      } else {
        return tj::FieldError(tj::Child(path, "prepend_scheme"),
                              absl::StrCat("unknown prepend scheme \"", s, "\""));
      }
    } else {
      // Files written before prepend_scheme existed use add_prefix_space.
      KBITD_ASSIGN_OR_RETURN(bool add, tj::Bool(json, "add_prefix_space", path, true));
      stage.prepend = add ? Stage::kAlways : Stage::kNever;
    }
  } else {
    return tj::FieldError(
        tj::Child(path, "type"),
        absl::StrCat("unsupported pre_tokenizer \"", type,
                     "\" (supported: Sequence, Split, ByteLevel, Metaspace, Digits, Punctuation, "
                     "Whitespace, WhitespaceSplit)"));
  }
  stages_.push_back(std::move(stage));
  return absl::OkStatus();
}

void PreTokenizer::ApplyStage(const Stage& stage, const PrePiece& piece,
                              std::vector<PrePiece>& out) const {
  std::vector<std::pair<size_t, size_t>> ranges;
  auto emit = [&](const std::string& text, bool at_start) {
    for (const auto& [a, b] : ranges) out.push_back({text.substr(a, b - a), at_start && a == 0});
  };
  switch (stage.kind) {
    case Stage::kSplit:
      SplitRanges(piece.text, *stage.pattern, stage.behavior, stage.invert, ranges);
      emit(piece.text, piece.at_start);
      return;
    case Stage::kByteLevel: {
      std::string text = piece.text;
      if (stage.add_prefix_space && text[0] != ' ') text.insert(0, " ");
      if (stage.use_regex) {
        SplitRanges(text, Gpt2Pattern(), Behavior::kIsolated, false, ranges);
      } else {
        ranges.emplace_back(0, text.size());
      }
      const auto& alphabet = ByteLevelAlphabet();
      for (const auto& [a, b] : ranges) {
        std::string mapped;
        mapped.reserve(2 * (b - a));
        for (size_t i = a; i < b; ++i)
          AppendUtf8(alphabet[static_cast<unsigned char>(text[i])], mapped);
        out.push_back({std::move(mapped), piece.at_start && a == 0});
      }
      return;
    }
    case Stage::kMetaspace: {
      std::string text;
      text.reserve(piece.text.size() + 8);
      for (char c : piece.text) {
        if (c == ' ') {
          text += stage.replacement;
        } else {
          text += c;
        }
      }
      const bool starts = text.compare(0, stage.replacement.size(), stage.replacement) == 0;
      if (!starts &&
          (stage.prepend == Stage::kAlways || (stage.prepend == Stage::kFirst && piece.at_start))) {
        text.insert(0, stage.replacement);
      }
      if (stage.split) {
        SplitRanges(text, *stage.pattern, Behavior::kMergedWithNext, false, ranges);
      } else {
        ranges.emplace_back(0, text.size());
      }
      emit(text, piece.at_start);
      return;
    }
  }
}

void PreTokenizer::Apply(std::vector<PrePiece>& pieces) const {
  std::vector<PrePiece> next;
  for (const Stage& stage : stages_) {
    next.clear();
    for (const PrePiece& piece : pieces) {
      if (!piece.text.empty()) ApplyStage(stage, piece, next);
    }
    pieces.swap(next);
  }
}

}  // namespace kbitd::runtime
