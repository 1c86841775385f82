// A Hugging Face tokenizer.json (the `tokenizers` library's format) loaded for encoding and
// decoding exactly as `tokenizers` does, for the BPE families LLMs use:
//  - ByteLevel BPE (GPT-2, Llama 3, Qwen2 style): Split regex and/or ByteLevel pre-tokenizer,
//    ByteLevel decoder, ignore_merges;
//  - SentencePiece-style BPE (Llama 2, Mistral style): Metaspace pre-tokenizer or the
//    Prepend("▁") + Replace(" ", "▁") normalizer, byte_fallback, decoders Replace / ByteFallback /
//    Fuse / Strip / Metaspace;
//  - normalizers Sequence / Prepend / Replace / Strip / NFC (Qwen2) / NFD;
//  - added and special tokens (lstrip, rstrip, single_word, normalized), TemplateProcessing.
// Unsupported components (other models, NFKC, Lowercase, ...) fail to load with an error
// naming the tokenizer.json field. Encode takes UTF-8 text and rejects invalid UTF-8 (the
// reference library only accepts Unicode strings). Decode rejects ids outside the vocabulary
// (tokenizers silently drops them). See runtime/tokenizer/streaming_decoder.h for incremental
// decoding. Thread-safe: immutable after creation; share it across threads freely.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kbitd::runtime {

class AddedVocabulary;
class BpeModel;
class Normalizer;
class PostProcessor;
class PreTokenizer;
class TokenDecoder;

class Tokenizer {
 public:
  // Reads tokenizer.json; if a tokenizer_config.json sits next to it, its bos_token/eos_token
  // name the BOS/EOS tokens.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // `config_json` is the optional content of tokenizer_config.json (empty: none).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             std::string_view config_json = {});
  ~Tokenizer();

  // INVALID_ARGUMENT if text is not valid UTF-8 (the message gives the byte offset).
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const;
  // INVALID_ARGUMENT if an id has no token.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // One more than the largest id of the model vocabulary and the added tokens (the embedding
  // rows a model needs at least).
  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  // BOS: tokenizer_config.json's bos_token, else the token the post-processor puts first.
  // EOS: tokenizer_config.json's eos_token, else the first present of "</s>", "<|end_of_text|>",
  // "<|endoftext|>", "<|im_end|>", "<eos>".
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> unk_id() const { return unk_id_; }

 private:
  friend class StreamingDecoder;
  Tokenizer();
  absl::Status Init(std::string_view json, std::string_view config_json);
  absl::Status EncodePiece(std::string_view text, bool at_start, std::vector<int32_t>& ids) const;
  // True when the decoder merges byte-fallback runs and `id` is a <0xXX> token.
  bool IsByteFallbackToken(int32_t id) const;

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<Normalizer> normalizer_;         // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;    // may be null
  std::unique_ptr<PostProcessor> post_processor_;  // may be null
  std::unique_ptr<TokenDecoder> decoder_;          // may be null: tokens joined with " "
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_, eos_id_, unk_id_;
};

}  // namespace kbitd::runtime
