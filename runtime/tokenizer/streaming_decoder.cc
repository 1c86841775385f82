#include "runtime/tokenizer/streaming_decoder.h"

#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> StreamingDecoder::Push(int32_t id) {
  if (!tokenizer_.IdToToken(id).has_value()) {
    // Reuse Decode's message for an unknown id.
    KBITD_ASSIGN_OR_RETURN(std::string unused, tokenizer_.Decode({&id, 1}, false));
    (void)unused;
  }
  ids_.push_back(id);
  if (tokenizer_.IsByteFallbackToken(id)) return std::string();
  KBITD_ASSIGN_OR_RETURN(std::string text, tokenizer_.Decode(ids_, skip_special_tokens_));
  if (text.size() <= context_text_.size() ||
      (text.size() >= kReplacementCharacter.size() &&
       std::string_view(text).substr(text.size() - kReplacementCharacter.size()) ==
           kReplacementCharacter) ||
      text.compare(0, context_text_.size(), context_text_) != 0) {
    return std::string();
  }
  std::string fresh = text.substr(context_text_.size());
  // The pending ids become the context of the next step.
  ids_.erase(ids_.begin(), ids_.begin() + context_size_);
  context_size_ = ids_.size();
  KBITD_ASSIGN_OR_RETURN(context_text_, tokenizer_.Decode(ids_, skip_special_tokens_));
  return fresh;
}

std::string StreamingDecoder::Flush() {
  std::string rest;
  if (ids_.size() > context_size_) {
    // Every id was validated by Push, so Decode cannot fail here.
    auto text = tokenizer_.Decode(ids_, skip_special_tokens_);
    if (text.ok() && text->size() >= context_text_.size()) {
      rest = text->substr(context_text_.size());
    }
  }
  ids_.clear();
  context_size_ = 0;
  context_text_.clear();
  return rest;
}

}  // namespace kbitd::runtime
