// Incremental detokenization for generation: Push one token id at a time and get back only
// text that is final. Text is held back while the decoded tail is an incomplete UTF-8 sequence
// (it ends in U+FFFD) or a run of <0xXX> byte-fallback tokens may still grow; Flush returns the
// rest at the end. The concatenation of all Push results and Flush equals
// Tokenizer::Decode(all ids, skip_special_tokens).
//
// How: the decoder keeps the ids emitted last as context and decodes context + pending ids; the
// new text is what follows the context's own decoding (the approach of tokenizers' DecodeStream),
// so decoders that treat the first token specially (Metaspace, Strip) behave as in a full decode.
// Cost per token is O(context + pending). Not thread-safe; one per generation stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace kbitd::runtime {

class StreamingDecoder {
 public:
  // `tokenizer` must outlive this object.
  StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);

  // INVALID_ARGUMENT (and no state change) if id is not in the vocabulary.
  absl::StatusOr<std::string> Push(int32_t id);
  // Returns whatever is still held back and resets the stream.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // context ids followed by pending ids
  size_t context_size_ = 0;   // leading ids of ids_ that are context
  std::string context_text_;  // Decode(context ids)
};

}  // namespace kbitd::runtime
