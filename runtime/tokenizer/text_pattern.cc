#include "runtime/tokenizer/text_pattern.h"

#include "absl/strings/str_cat.h"

namespace kbitd::runtime {

absl::StatusOr<TextPattern> TextPattern::Create(const tokenizer_json::Pattern& pattern,
                                                std::string_view path) {
  TextPattern p;
  if (!pattern.is_regex) {
    p.literal_ = pattern.text;
    return p;
  }
  auto regex = SplitRegex::Compile(pattern.text);
  if (!regex.ok()) {
    return tokenizer_json::FieldError(tokenizer_json::Child(path, "pattern"),
                                      std::string(regex.status().message()));
  }
  p.regex_ = *std::move(regex);
  return p;
}

void TextPattern::FindAll(std::string_view text, std::vector<SplitRegex::Match>& out) const {
  if (regex_.has_value()) {
    regex_->FindAll(text, out);
    return;
  }
  size_t pos = 0;
  while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + literal_.size());
    pos += literal_.size();
  }
}

}  // namespace kbitd::runtime
