#include "runtime/tokenizer/tokenizer_json.h"

namespace kbitd::runtime::tokenizer_json {

absl::StatusOr<std::string> TypeOf(const JsonValue& obj, std::string_view path) {
  if (!obj.is_object()) return FieldError(path, "must be an object");
  const JsonValue* type = obj.Find("type");
  if (type == nullptr || !type->is_string()) return FieldError(Child(path, "type"), "missing");
  return type->string_value();
}

absl::StatusOr<std::string> String(const JsonValue& obj, std::string_view key,
                                   std::string_view path, std::string_view fallback) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || v->is_null()) return std::string(fallback);
  if (!v->is_string()) return FieldError(Child(path, key), "must be a string");
  return v->string_value();
}

absl::StatusOr<bool> Bool(const JsonValue& obj, std::string_view key, std::string_view path,
                          bool fallback) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_bool()) return FieldError(Child(path, key), "must be true or false");
  return v->bool_value();
}

absl::StatusOr<int64_t> Integer(const JsonValue& obj, std::string_view key, std::string_view path,
                                int64_t fallback) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_integer()) return FieldError(Child(path, key), "must be an integer");
  return v->integer_value();
}

absl::StatusOr<const JsonValue::Array*> Array(const JsonValue& obj, std::string_view key,
                                              std::string_view path) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || !v->is_array()) return FieldError(Child(path, key), "must be an array");
  return &v->array();
}

absl::StatusOr<Pattern> ReadPattern(const JsonValue& obj, std::string_view path) {
  const std::string field = Child(path, "pattern");
  const JsonValue* p = obj.Find("pattern");
  if (p == nullptr || !p->is_object() || p->object().size() != 1 ||
      !p->object()[0].second.is_string()) {
    return FieldError(field, "must be {\"String\": ...} or {\"Regex\": ...}");
  }
  const auto& [kind, value] = p->object()[0];
  if (kind != "String" && kind != "Regex") {
    return FieldError(field, absl::StrCat("unknown pattern kind \"", kind, "\""));
  }
  Pattern pattern{kind == "Regex", value.string_value()};
  if (pattern.text.empty()) return FieldError(field, "empty pattern");
  return pattern;
}

}  // namespace kbitd::runtime::tokenizer_json
