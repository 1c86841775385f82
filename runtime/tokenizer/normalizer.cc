#include "runtime/tokenizer/normalizer.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "runtime/tokenizer/unicode/unicode_normalization.h"
#include "runtime/tokenizer/unicode/unicode_tables.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

absl::StatusOr<std::unique_ptr<Normalizer>> Normalizer::FromJson(const JsonValue& json,
                                                                 std::string_view path) {
  std::unique_ptr<Normalizer> n(new Normalizer());
  KBITD_RETURN_IF_ERROR(n->Add(json, path));
  return n;
}

absl::Status Normalizer::Add(const JsonValue& json, std::string_view path) {
  // Not KBITD_ASSIGN_OR_RETURN: GCC 12 (-O2) then takes the string moved out of the StatusOr for
  // maybe uninitialized in the comparisons below (-Wmaybe-uninitialized).
  const absl::StatusOr<std::string> type_or = tj::TypeOf(json, path);
  if (!type_or.ok()) return type_or.status();
  const std::string& type = *type_or;
  if (type == "Sequence") {
    KBITD_ASSIGN_OR_RETURN(const JsonValue::Array* items, tj::Array(json, "normalizers", path));
    for (size_t i = 0; i < items->size(); ++i) {
      KBITD_RETURN_IF_ERROR(Add((*items)[i], tj::Index(tj::Child(path, "normalizers"), i)));
    }
    return absl::OkStatus();
  }
  Step step;
  if (type == "Prepend") {
    step.kind = Step::kPrepend;
    KBITD_ASSIGN_OR_RETURN(step.content, tj::String(json, "prepend", path, ""));
  } else if (type == "Replace") {
    step.kind = Step::kReplace;
    KBITD_ASSIGN_OR_RETURN(tj::Pattern pattern, tj::ReadPattern(json, path));
    KBITD_ASSIGN_OR_RETURN(step.pattern, TextPattern::Create(pattern, path));
    KBITD_ASSIGN_OR_RETURN(step.content, tj::String(json, "content", path, ""));
  } else if (type == "NFC" || type == "NFD") {
    step.kind = type == "NFC" ? Step::kNfc : Step::kNfd;
  } else if (type == "Strip") {
    step.kind = Step::kStrip;
    KBITD_ASSIGN_OR_RETURN(step.strip_left, tj::Bool(json, "strip_left", path, true));
    KBITD_ASSIGN_OR_RETURN(step.strip_right, tj::Bool(json, "strip_right", path, true));
  } else {
    return tj::FieldError(
        tj::Child(path, "type"),
        absl::StrCat("unsupported normalizer \"", type,
                     "\" (supported: Sequence, Prepend, Replace, Strip, NFC, NFD)"));
  }
  steps_.push_back(std::move(step));
  return absl::OkStatus();
}

std::string Normalizer::Normalize(std::string_view text) const {
  std::string current(text);
  std::vector<SplitRegex::Match> matches;
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::kPrepend:
        if (!current.empty()) current.insert(0, step.content);
        break;
      case Step::kReplace: {
        matches.clear();
        step.pattern->FindAll(current, matches);
        if (matches.empty()) break;
        std::string out;
        size_t last = 0;
        for (const auto& [a, b] : matches) {
          out.append(current, last, a - last);
          out += step.content;
          last = b;
        }
        out.append(current, last);
        current = std::move(out);
        break;
      }
      case Step::kNfc:
        current = NormalizeNfc(current);
        break;
      case Step::kNfd:
        current = NormalizeNfd(current);
        break;
      case Step::kStrip: {
        // Strips White_Space code points (Rust's char::is_whitespace) from either end.
        size_t begin = 0, end = current.size();
        if (step.strip_left) {
          while (begin < end) {
            size_t p = begin;
            if (!IsUnicodeWhiteSpace(DecodeUtf8(current, p))) break;
            begin = p;
          }
        }
        if (step.strip_right) {
          while (end > begin) {
            size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>(current[start]) & 0xC0) == 0x80) {
              --start;
            }
            size_t p = start;
            if (!IsUnicodeWhiteSpace(DecodeUtf8(current, p))) break;
            end = start;
          }
        }
        current = current.substr(begin, end - begin);
        break;
      }
    }
  }
  return current;
}

}  // namespace kbitd::runtime
