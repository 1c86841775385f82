// Small helpers for reading tokenizer.json components with errors that name the field path,
// e.g. "tokenizer.json pre_tokenizer.pretokenizers[0].pattern: ...". Internal to the tokenizer.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"

namespace kbitd::runtime::tokenizer_json {

inline absl::Status FieldError(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json ", std::string(path), ": ", std::string(what)));
}

inline std::string Child(std::string_view path, std::string_view key) {
  return absl::StrCat(std::string(path), ".", std::string(key));
}

inline std::string Index(std::string_view path, size_t i) {
  return absl::StrCat(std::string(path), "[", i, "]");
}

// The "type" of a component object.
absl::StatusOr<std::string> TypeOf(const JsonValue& obj, std::string_view path);
// Field readers; absent or null yields the fallback.
absl::StatusOr<std::string> String(const JsonValue& obj, std::string_view key,
                                   std::string_view path, std::string_view fallback);
absl::StatusOr<bool> Bool(const JsonValue& obj, std::string_view key, std::string_view path,
                          bool fallback);
absl::StatusOr<int64_t> Integer(const JsonValue& obj, std::string_view key, std::string_view path,
                                int64_t fallback);
// An array member (required).
absl::StatusOr<const JsonValue::Array*> Array(const JsonValue& obj, std::string_view key,
                                              std::string_view path);

// A replacement pattern {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  bool is_regex = false;
  std::string text;
};
absl::StatusOr<Pattern> ReadPattern(const JsonValue& obj, std::string_view path);

}  // namespace kbitd::runtime::tokenizer_json
