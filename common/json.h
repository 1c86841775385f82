// A strict JSON (RFC 8259) value, parser and writer. Used for safetensors headers, config.json,
// tokenizer.json and bitsandbytes' quant-state JSON, so it is strict by design: no comments, no
// trailing commas, no NaN literals, UTF-8 validated, bounded nesting depth, duplicate object keys
// rejected. Objects keep insertion order (bitsandbytes and safetensors writers care about order).
// Not thread-safe for mutation; const access is safe from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kbitd {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() = default;
  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool value);
  static JsonValue Number(double value);
  static JsonValue Integer(int64_t value);
  static JsonValue String(std::string value);
  static JsonValue MakeArray(Array items = {});
  static JsonValue MakeObject(Object members = {});

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  bool bool_value() const { return bool_; }
  double number_value() const { return number_; }
  // True if the number was written without fraction/exponent and fits in int64.
  bool is_integer() const { return kind_ == Kind::kNumber && integer_.has_value(); }
  // The integer; for a number that is not one, the number truncated toward zero and clamped to
  // int64's range (NaN: 0).
  int64_t integer_value() const;
  const std::string& string_value() const { return string_; }
  const Array& array() const { return array_; }
  Array& mutable_array() { return array_; }
  const Object& object() const { return object_; }
  Object& mutable_object() { return object_; }

  // Object lookup; nullptr when absent or when this is not an object.
  const JsonValue* Find(std::string_view key) const;
  // Sets (replacing) a member of an object.
  void Set(std::string key, JsonValue value);

  // Typed accessors that fail with a message naming `key`.
  absl::StatusOr<int64_t> GetInteger(std::string_view key) const;
  absl::StatusOr<double> GetNumber(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;

  struct WriteOptions {
    // Python json.dumps defaults: ", " and ": " separators, no indentation.
    int indent = -1;  // -1: one line; n >= 0: pretty print with n spaces (json.dump(indent=n)).
    bool sort_keys = false;
    bool python_separators = true;  // false: compact "," and ":".
  };
  std::string Write(const WriteOptions& options) const;
  std::string Write() const { return Write(WriteOptions{}); }

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::optional<int64_t> integer_;
  std::string string_;
  Array array_;
  Object object_;
};

struct JsonParseOptions {
  size_t max_depth = 128;
  bool allow_duplicate_keys = false;
};

// Parses exactly one JSON value; surrounding whitespace is allowed, anything else is an error
// that gives the byte offset.
absl::StatusOr<JsonValue> ParseJson(std::string_view text, const JsonParseOptions& options = {});

// Formats a double the way Python's repr() does (shortest round-trip, "1.0" for integers,
// "1e-05" exponents), which is what json.dumps writes for floats.
std::string FormatPythonFloat(double value);

}  // namespace kbitd
