#include "runtime/tokenizer/token_decoder.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "runtime/tokenizer/pre_tokenizer.h"
#include "runtime/tokenizer/tokenizer_json.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

namespace {

// Code point -> byte inverse of the GPT-2 byte alphabet (-1: not in the alphabet).
int ByteOfAlphabetChar(char32_t cp) {
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(512, -1);
    const auto& alphabet = ByteLevelAlphabet();
    for (int b = 0; b < 256; ++b) inv[alphabet[b]] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// "<0xXX>" -> byte, as ByteFallback parses it (u8::from_str_radix over the two characters).
int ParseByteToken(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(token[3]), lo = hex(token[4]);
  if (token[3] == '+' && lo >= 0) return lo;  // from_str_radix accepts a leading '+'
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

absl::StatusOr<char32_t> SingleChar(const JsonValue& json, std::string_view key,
                                    std::string_view path) {
  KBITD_ASSIGN_OR_RETURN(std::string s, tj::String(json, key, path, ""));
  size_t pos = 0;
  if (s.empty() || FindInvalidUtf8(s)) {
    return tj::FieldError(tj::Child(path, key), "must be one character");
  }
  const char32_t cp = DecodeUtf8(s, pos);
  if (pos != s.size()) return tj::FieldError(tj::Child(path, key), "must be one character");
  return cp;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenDecoder>> TokenDecoder::FromJson(const JsonValue& json,
                                                                     std::string_view path) {
  std::unique_ptr<TokenDecoder> d(new TokenDecoder());
  KBITD_RETURN_IF_ERROR(d->Add(json, path));
  return d;
}

absl::Status TokenDecoder::Add(const JsonValue& json, std::string_view path) {
  KBITD_ASSIGN_OR_RETURN(std::string type, tj::TypeOf(json, path));
  Step step;
  if (type == "Sequence") {
    KBITD_ASSIGN_OR_RETURN(const JsonValue::Array* items, tj::Array(json, "decoders", path));
    for (size_t i = 0; i < items->size(); ++i) {
      KBITD_RETURN_IF_ERROR(Add((*items)[i], tj::Index(tj::Child(path, "decoders"), i)));
    }
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    step.kind = Step::kByteLevel;
  } else if (type == "Metaspace") {
    step.kind = Step::kMetaspace;
    KBITD_ASSIGN_OR_RETURN(char32_t replacement, SingleChar(json, "replacement", path));
    AppendUtf8(replacement, step.from);
    const JsonValue* scheme = json.Find("prepend_scheme");
    if (scheme != nullptr && !scheme->is_null()) {
      KBITD_ASSIGN_OR_RETURN(std::string s, tj::String(json, "prepend_scheme", path, ""));
      if (s != "always" && s != "first" && s != "never") {
        return tj::FieldError(tj::Child(path, "prepend_scheme"),
                              absl::StrCat("unknown prepend scheme \"", s, "\""));
      }
      step.strip_first = s != "never";
    } else {
      KBITD_ASSIGN_OR_RETURN(step.strip_first, tj::Bool(json, "add_prefix_space", path, true));
    }
  } else if (type == "Replace") {
    step.kind = Step::kReplace;
    KBITD_ASSIGN_OR_RETURN(tj::Pattern pattern, tj::ReadPattern(json, path));
    if (pattern.is_regex) {
      return tj::FieldError(tj::Child(path, "pattern"),
                            "Regex patterns in the Replace decoder are not supported");
    }
    step.from = pattern.text;
    KBITD_ASSIGN_OR_RETURN(step.to, tj::String(json, "content", path, ""));
  } else if (type == "ByteFallback") {
    step.kind = Step::kByteFallback;
    has_byte_fallback_ = true;
  } else if (type == "Fuse") {
    step.kind = Step::kFuse;
  } else if (type == "Strip") {
    step.kind = Step::kStrip;
    KBITD_ASSIGN_OR_RETURN(step.content, SingleChar(json, "content", path));
    KBITD_ASSIGN_OR_RETURN(step.start, tj::Integer(json, "start", path, 0));
    KBITD_ASSIGN_OR_RETURN(step.stop, tj::Integer(json, "stop", path, 0));
    if (step.start < 0 || step.stop < 0) {
      return tj::FieldError(path, "start and stop must not be negative");
    }
  } else {
    return tj::FieldError(
        tj::Child(path, "type"),
        absl::StrCat("unsupported decoder \"", type,
                     "\" (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
                     "Strip)"));
  }
  steps_.push_back(std::move(step));
  return absl::OkStatus();
}

void TokenDecoder::ApplyStep(const Step& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case Step::kByteLevel: {
      // All tokens' bytes are joined and decoded once, lossily; a token with a character outside
      // the byte alphabet contributes its own UTF-8 bytes (decoders/byte_level.rs).
      std::string bytes;
      for (const std::string& t : tokens) {
        const size_t mark = bytes.size();
        size_t pos = 0;
        bool all = true;
        while (pos < t.size()) {
          const int b = ByteOfAlphabetChar(DecodeUtf8(t, pos));
          if (b < 0) {
            all = false;
            break;
          }
          bytes += static_cast<char>(b);
        }
        if (!all) {
          bytes.resize(mark);
          bytes += t;
        }
      }
      tokens.assign(1, Utf8Lossy(bytes));
      return;
    }
    case Step::kMetaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        // The first token loses every replacement character when a prefix was prepended.
        tokens[i] =
            absl::StrReplaceAll(tokens[i], {{step.from, i == 0 && step.strip_first ? "" : " "}});
      }
      return;
    case Step::kReplace:
      for (std::string& t : tokens) t = absl::StrReplaceAll(t, {{step.from, step.to}});
      return;
    case Step::kByteFallback: {
      std::vector<std::string> out;
      std::string run;  // bytes of consecutive <0xXX> tokens
      size_t run_tokens = 0;
      auto flush = [&] {
        if (run_tokens == 0) return;
        if (!FindInvalidUtf8(run)) {
          out.push_back(run);
        } else {
          for (size_t i = 0; i < run_tokens; ++i) out.emplace_back(kReplacementCharacter);
        }
        run.clear();
        run_tokens = 0;
      };
      for (std::string& t : tokens) {
        const int b = ParseByteToken(t);
        if (b >= 0) {
          run += static_cast<char>(b);
          ++run_tokens;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens.swap(out);
      return;
    }
    case Step::kFuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      return;
    }
    case Step::kStrip:
      for (std::string& t : tokens) {
        std::vector<size_t> starts;  // byte offset of each code point
        size_t pos = 0;
        std::vector<char32_t> cps;
        while (pos < t.size()) {
          starts.push_back(pos);
          cps.push_back(DecodeUtf8(t, pos));
        }
        starts.push_back(t.size());
        size_t begin = 0, end = cps.size();
        while (begin < cps.size() && begin < static_cast<size_t>(step.start) &&
               cps[begin] == step.content) {
          ++begin;
        }
        for (int64_t i = 0; i < step.stop && end > 0 && cps[end - 1] == step.content; ++i) --end;
        t = end > begin ? t.substr(starts[begin], starts[end] - starts[begin]) : "";
      }
      return;
  }
}

std::string TokenDecoder::Decode(std::vector<std::string> tokens) const {
  for (const Step& step : steps_) ApplyStep(step, tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace kbitd::runtime
