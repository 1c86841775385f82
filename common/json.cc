#include "common/json.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/utf8.h"

namespace kbitd {

JsonValue JsonValue::Bool(bool value) {
  JsonValue v;
  v.kind_ = Kind::kBool;
  v.bool_ = value;
  return v;
}

JsonValue JsonValue::Number(double value) {
  JsonValue v;
  v.kind_ = Kind::kNumber;
  v.number_ = value;
  return v;
}

JsonValue JsonValue::Integer(int64_t value) {
  JsonValue v;
  v.kind_ = Kind::kNumber;
  v.number_ = static_cast<double>(value);
  v.integer_ = value;
  return v;
}

int64_t JsonValue::integer_value() const {
  if (integer_.has_value()) return *integer_;
  // Converting a double outside int64's range is undefined behaviour, so clamp first. (Integers
  // never get here: their double, rounded, can be 2^63, which is out of range.)
  if (std::isnan(number_)) return 0;
  if (number_ >= 0x1p63) return INT64_MAX;
  if (number_ < -0x1p63) return INT64_MIN;
  return static_cast<int64_t>(number_);
}

JsonValue JsonValue::String(std::string value) {
  JsonValue v;
  v.kind_ = Kind::kString;
  v.string_ = std::move(value);
  return v;
}

JsonValue JsonValue::MakeArray(Array items) {
  JsonValue v;
  v.kind_ = Kind::kArray;
  v.array_ = std::move(items);
  return v;
}

JsonValue JsonValue::MakeObject(Object members) {
  JsonValue v;
  v.kind_ = Kind::kObject;
  v.object_ = std::move(members);
  return v;
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (kind_ != Kind::kObject) return nullptr;
  for (const auto& [name, value] : object_) {
    if (name == key) return &value;
  }
  return nullptr;
}

void JsonValue::Set(std::string key, JsonValue value) {
  kind_ = Kind::kObject;
  for (auto& [name, existing] : object_) {
    if (name == key) {
      existing = std::move(value);
      return;
    }
  }
  object_.emplace_back(std::move(key), std::move(value));
}

absl::StatusOr<int64_t> JsonValue::GetInteger(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("missing key \"", std::string(key), "\""));
  if (!v->is_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", std::string(key), "\" must be an integer"));
  }
  return v->integer_value();
}

absl::StatusOr<double> JsonValue::GetNumber(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("missing key \"", std::string(key), "\""));
  if (!v->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", std::string(key), "\" must be a number"));
  }
  return v->number_value();
}

absl::StatusOr<std::string> JsonValue::GetString(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("missing key \"", std::string(key), "\""));
  if (!v->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", std::string(key), "\" must be a string"));
  }
  return v->string_value();
}

absl::StatusOr<bool> JsonValue::GetBool(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("missing key \"", std::string(key), "\""));
  if (!v->is_bool()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", std::string(key), "\" must be true or false"));
  }
  return v->bool_value();
}

namespace {

class Parser {
 public:
  Parser(std::string_view text, const JsonParseOptions& options) : text_(text), options_(options) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    SkipWhitespace();
    JsonValue value;
    if (!ParseValue(value, 0)) return error_;
    SkipWhitespace();
    if (pos_ != text_.size()) {
      Fail("unexpected trailing characters");
      return error_;
    }
    return value;
  }

 private:
  void Fail(std::string_view what) {
    error_ = absl::InvalidArgumentError(
        absl::StrCat("JSON parse error at byte ", pos_, ": ", std::string(what)));
  }

  void SkipWhitespace() {
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  bool Consume(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) == literal) {
      pos_ += literal.size();
      return true;
    }
    return false;
  }

  bool ParseValue(JsonValue& out, size_t depth) {
    if (depth > options_.max_depth) {
      Fail("nesting too deep");
      return false;
    }
    if (pos_ >= text_.size()) {
      Fail("unexpected end of input");
      return false;
    }
    char c = text_[pos_];
    if (c == '{') return ParseObject(out, depth);
    if (c == '[') return ParseArray(out, depth);
    if (c == '"') {
      std::string s;
      if (!ParseString(s)) return false;
      out = JsonValue::String(std::move(s));
      return true;
    }
    if (Consume("true")) {
      out = JsonValue::Bool(true);
      return true;
    }
    if (Consume("false")) {
      out = JsonValue::Bool(false);
      return true;
    }
    if (Consume("null")) {
      out = JsonValue::Null();
      return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    Fail(absl::StrFormat("unexpected character '%c'", c));
    return false;
  }

  bool ParseNumber(JsonValue& out) {
    size_t start = pos_;
    bool is_integer = true;
    if (text_[pos_] == '-') ++pos_;
    if (pos_ >= text_.size()) {
      Fail("truncated number");
      return false;
    }
    if (text_[pos_] == '0') {
      ++pos_;
    } else if (text_[pos_] >= '1' && text_[pos_] <= '9') {
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    } else {
      Fail("invalid number");
      return false;
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      is_integer = false;
      ++pos_;
      size_t digits = pos_;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
      if (pos_ == digits) {
        Fail("invalid number: no digits after '.'");
        return false;
      }
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      is_integer = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      size_t digits = pos_;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
      if (pos_ == digits) {
        Fail("invalid number: no exponent digits");
        return false;
      }
    }
    std::string_view token = text_.substr(start, pos_ - start);
    double value = 0;
    auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
    if (ec == std::errc::result_out_of_range) {
      // Overflow to infinity is not representable in JSON; underflow to zero is fine.
      if (std::strtod(std::string(token).c_str(), nullptr) != 0.0) {
        Fail("number out of range");
        return false;
      }
      value = 0.0;
    } else if (ec != std::errc()) {
      Fail("invalid number");
      return false;
    }
    out = JsonValue::Number(value);
    if (is_integer) {
      int64_t integer = 0;
      auto [iptr, iec] = std::from_chars(token.data(), token.data() + token.size(), integer);
      if (iec == std::errc() && iptr == token.data() + token.size())
        out = JsonValue::Integer(integer);
    }
    return true;
  }

  bool ParseHex4(uint32_t& code) {
    if (pos_ + 4 > text_.size()) {
      Fail("truncated \\u escape");
      return false;
    }
    code = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text_[pos_ + i];
      code <<= 4;
      if (h >= '0' && h <= '9')
        code |= h - '0';
      else if (h >= 'a' && h <= 'f')
        code |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F')
        code |= h - 'A' + 10;
      else {
        Fail("invalid \\u escape");
        return false;
      }
    }
    pos_ += 4;
    return true;
  }

  bool ParseString(std::string& out) {
    ++pos_;  // opening quote
    size_t run_start = pos_;
    while (true) {
      if (pos_ >= text_.size()) {
        Fail("unterminated string");
        return false;
      }
      unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        out.append(text_.substr(run_start, pos_ - run_start));
        ++pos_;
        break;
      }
      if (c < 0x20) {
        Fail("control character in string");
        return false;
      }
      if (c != '\\') {
        ++pos_;
        continue;
      }
      out.append(text_.substr(run_start, pos_ - run_start));
      ++pos_;
      if (pos_ >= text_.size()) {
        Fail("unterminated escape");
        return false;
      }
      char e = text_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t code;
          if (!ParseHex4(code)) return false;
          if (code >= 0xD800 && code <= 0xDBFF) {
            uint32_t low;
            if (!Consume("\\u") || !ParseHex4(low) || low < 0xDC00 || low > 0xDFFF) {
              Fail("unpaired UTF-16 surrogate");
              return false;
            }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code <= 0xDFFF) {
            Fail("unpaired UTF-16 surrogate");
            return false;
          }
          AppendUtf8(code, out);
          break;
        }
        default:
          Fail("invalid escape");
          return false;
      }
      run_start = pos_;
    }
    if (!IsValidUtf8(out)) {
      Fail("string is not valid UTF-8");
      return false;
    }
    return true;
  }

  bool ParseArray(JsonValue& out, size_t depth) {
    ++pos_;
    JsonValue::Array items;
    SkipWhitespace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      out = JsonValue::MakeArray(std::move(items));
      return true;
    }
    while (true) {
      SkipWhitespace();
      JsonValue item;
      if (!ParseValue(item, depth + 1)) return false;
      items.push_back(std::move(item));
      SkipWhitespace();
      if (pos_ >= text_.size()) {
        Fail("unterminated array");
        return false;
      }
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == ']') {
        ++pos_;
        break;
      }
      Fail("expected ',' or ']'");
      return false;
    }
    out = JsonValue::MakeArray(std::move(items));
    return true;
  }

  bool ParseObject(JsonValue& out, size_t depth) {
    ++pos_;
    JsonValue::Object members;
    std::map<std::string, size_t, std::less<>> seen;
    SkipWhitespace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      out = JsonValue::MakeObject(std::move(members));
      return true;
    }
    while (true) {
      SkipWhitespace();
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        Fail("expected object key");
        return false;
      }
      std::string key;
      if (!ParseString(key)) return false;
      SkipWhitespace();
      if (pos_ >= text_.size() || text_[pos_] != ':') {
        Fail("expected ':'");
        return false;
      }
      ++pos_;
      SkipWhitespace();
      JsonValue value;
      if (!ParseValue(value, depth + 1)) return false;
      auto it = seen.find(key);
      if (it != seen.end()) {
        if (!options_.allow_duplicate_keys) {
          Fail(absl::StrCat("duplicate key \"", key, "\""));
          return false;
        }
        members[it->second].second = std::move(value);  // last one wins, as in Python
      } else {
        seen.emplace(key, members.size());
        members.emplace_back(std::move(key), std::move(value));
      }
      SkipWhitespace();
      if (pos_ >= text_.size()) {
        Fail("unterminated object");
        return false;
      }
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '}') {
        ++pos_;
        break;
      }
      Fail("expected ',' or '}'");
      return false;
    }
    out = JsonValue::MakeObject(std::move(members));
    return true;
  }

  std::string_view text_;
  JsonParseOptions options_;
  size_t pos_ = 0;
  absl::Status error_;
};

// Python json.dumps(ensure_ascii=True) string escaping.
void WriteString(std::string_view s, std::string& out) {
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\b') {
      out += "\\b";
    } else if (c == '\f') {
      out += "\\f";
    } else if (c < 0x20 || c == 0x7F) {
      out += absl::StrFormat("\\u%04x", c);
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      // Decode one UTF-8 sequence (the value was validated on parse or built by us).
      int extra = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
      uint32_t code = c & (extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07);
      for (int k = 1; k <= extra && i + k < s.size(); ++k) {
        code = (code << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
      }
      i += extra;
      if (code >= 0x10000) {
        code -= 0x10000;
        out += absl::StrFormat("\\u%04x\\u%04x", 0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF));
      } else {
        out += absl::StrFormat("\\u%04x", code);
      }
    }
    ++i;
  }
  out += '"';
}

void WriteValue(const JsonValue& v, const JsonValue::WriteOptions& options, int level,
                std::string& out) {
  const std::string item_separator =
      options.indent >= 0 ? "," : (options.python_separators ? ", " : ",");
  const std::string key_separator = options.python_separators || options.indent >= 0 ? ": " : ":";
  auto newline = [&](int lvl) {
    if (options.indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(options.indent * lvl), ' ');
  };
  switch (v.kind()) {
    case JsonValue::Kind::kNull:
      out += "null";
      break;
    case JsonValue::Kind::kBool:
      out += v.bool_value() ? "true" : "false";
      break;
    case JsonValue::Kind::kNumber:
      if (v.is_integer()) {
        out += std::to_string(v.integer_value());
      } else {
        out += FormatPythonFloat(v.number_value());
      }
      break;
    case JsonValue::Kind::kString:
      WriteString(v.string_value(), out);
      break;
    case JsonValue::Kind::kArray: {
      if (v.array().empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (size_t i = 0; i < v.array().size(); ++i) {
        if (i > 0) out += item_separator;
        newline(level + 1);
        WriteValue(v.array()[i], options, level + 1, out);
      }
      newline(level);
      out += ']';
      break;
    }
    case JsonValue::Kind::kObject: {
      if (v.object().empty()) {
        out += "{}";
        break;
      }
      std::vector<const std::pair<std::string, JsonValue>*> members;
      for (const auto& m : v.object()) members.push_back(&m);
      if (options.sort_keys) {
        std::sort(members.begin(), members.end(),
                  [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out += '{';
      for (size_t i = 0; i < members.size(); ++i) {
        if (i > 0) out += item_separator;
        newline(level + 1);
        WriteString(members[i]->first, out);
        out += key_separator;
        WriteValue(members[i]->second, options, level + 1, out);
      }
      newline(level);
      out += '}';
      break;
    }
  }
}

}  // namespace

absl::StatusOr<JsonValue> ParseJson(std::string_view text, const JsonParseOptions& options) {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("JSON text is not valid UTF-8");
  Parser parser(text, options);
  return parser.ParseDocument();
}

std::string JsonValue::Write(const WriteOptions& options) const {
  std::string out;
  WriteValue(*this, options, 0, out);
  return out;
}

std::string FormatPythonFloat(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  char buffer[64];
  auto [end, ec] =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string sci(buffer, end);  // e.g. "-1.2345e-05"
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e_pos = sci.find('e');
  std::string digits = sci.substr(0, e_pos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exponent = std::stoi(sci.substr(e_pos + 1));
  int decimal_point = exponent + 1;  // digits d1d2... represent 0.d1d2... * 10^decimal_point
  std::string out = negative ? "-" : "";
  // CPython float_repr_style 'short': scientific when decpt <= -4 or decpt > 16.
  if (decimal_point <= -4 || decimal_point > 16) {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    out += 'e';
    int e = decimal_point - 1;
    out += e < 0 ? '-' : '+';
    std::string e_digits = std::to_string(std::abs(e));
    if (e_digits.size() < 2) e_digits = "0" + e_digits;
    out += e_digits;
  } else if (decimal_point <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-decimal_point), '0');
    out += digits;
  } else if (static_cast<size_t>(decimal_point) >= digits.size()) {
    out += digits;
    out.append(static_cast<size_t>(decimal_point) - digits.size(), '0');
    out += ".0";
  } else {
    out += digits.substr(0, decimal_point);
    out += '.';
    out += digits.substr(decimal_point);
  }
  return out;
}

}  // namespace kbitd
