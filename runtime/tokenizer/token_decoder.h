// tokenizer.json "decoder": turns tokens back into text. Supported: Sequence, ByteLevel,
// Metaspace, Replace (String pattern), ByteFallback, Fuse, Strip; others are rejected naming the
// field. Each step maps the token list as the matching decoder in tokenizers/src/decoders/ does
// (decode_chain), and the result is the concatenation. Thread-safe: const after creation.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"

namespace kbitd::runtime {

class TokenDecoder {
 public:
  static absl::StatusOr<std::unique_ptr<TokenDecoder>> FromJson(const JsonValue& json,
                                                                std::string_view path);
  std::string Decode(std::vector<std::string> tokens) const;
  // True when a ByteFallback step merges <0xXX> tokens: a streaming decoder must then hold a
  // run of byte tokens until it ends.
  bool has_byte_fallback() const { return has_byte_fallback_; }

 private:
  struct Step {
    enum Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
    std::string from, to;         // kReplace; kMetaspace: from = replacement
    bool strip_first = true;      // kMetaspace: prepend_scheme != never
    char32_t content = 0;         // kStrip
    int64_t start = 0, stop = 0;  // kStrip
  };
  absl::Status Add(const JsonValue& json, std::string_view path);
  static void ApplyStep(const Step& step, std::vector<std::string>& tokens);

  std::vector<Step> steps_;
  bool has_byte_fallback_ = false;
};

}  // namespace kbitd::runtime
