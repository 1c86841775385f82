// kbitd_tokenize: a small CLI over runtime/tokenizer/tokenizer.h, used by
// tests/e2e/test_tokenizer_parity.py to compare with Hugging Face `tokenizers`, and to benchmark
// encoding.
//
//   kbitd_tokenize --tokenizer tokenizer.json            JSON lines on stdin -> JSON lines out
//   kbitd_tokenize --tokenizer tokenizer.json --bench FILE [--repeat N]
//
// Requests (one JSON object per line) and replies:
//   {"encode": "text", "add_special_tokens": true}     -> {"ids": [...]}
//   {"encode_hex": "68690a", "add_special_tokens": ..} -> same, from raw bytes (may be bad UTF-8)
//   {"decode": [ids], "skip_special_tokens": false}   -> {"text": "..."}
//   {"stream": [ids], "skip_special_tokens": false}   -> {"pieces": [...]} (StreamingDecoder)
//   {"info": true} -> {"vocab_size": n, "bos_id": id|null, "eos_id": id|null}
// Any failure answers {"error": "message"}. --bench encodes every line of FILE (N times) and
// prints bytes, tokens, seconds and MB/s as one JSON line.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "runtime/tokenizer/streaming_decoder.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

using kbitd::JsonValue;
using kbitd::runtime::StreamingDecoder;
using kbitd::runtime::Tokenizer;

JsonValue Error(absl::string_view message) {
  JsonValue v = JsonValue::MakeObject();
  v.Set("error", JsonValue::String(std::string(message)));
  return v;
}

JsonValue Ids(const std::vector<int32_t>& ids) {
  JsonValue::Array items;
  items.reserve(ids.size());
  for (int32_t id : ids) items.push_back(JsonValue::Integer(id));
  JsonValue v = JsonValue::MakeObject();
  v.Set("ids", JsonValue::MakeArray(std::move(items)));
  return v;
}

bool Flag(const JsonValue& request, std::string_view key, bool fallback) {
  const JsonValue* v = request.Find(key);
  return v != nullptr && v->is_bool() ? v->bool_value() : fallback;
}

absl::StatusOr<std::vector<int32_t>> ReadIds(const JsonValue& array) {
  if (!array.is_array()) return absl::InvalidArgumentError("ids must be an array");
  std::vector<int32_t> ids;
  for (const JsonValue& v : array.array()) {
    if (!v.is_integer() || v.integer_value() < INT32_MIN || v.integer_value() > INT32_MAX) {
      return absl::InvalidArgumentError("ids must be 32-bit integers");
    }
    ids.push_back(static_cast<int32_t>(v.integer_value()));
  }
  return ids;
}

absl::StatusOr<std::string> FromHex(const std::string& hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("odd-length hex");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int value = 0;
    for (char c : {hex[i], hex[i + 1]}) {
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (d < 0) return absl::InvalidArgumentError("invalid hex digit");
      value = value * 16 + d;
    }
    out += static_cast<char>(value);
  }
  return out;
}

JsonValue Handle(const Tokenizer& tokenizer, const JsonValue& request) {
  if (!request.is_object()) return Error("request must be an object");
  if (const JsonValue* text = request.Find("encode"); text || request.Find("encode_hex")) {
    std::string input;
    if (text != nullptr) {
      if (!text->is_string()) return Error("encode must be a string");
      input = text->string_value();
    } else {
      const JsonValue* hex = request.Find("encode_hex");
      if (!hex->is_string()) return Error("encode_hex must be a string");
      auto bytes = FromHex(hex->string_value());
      if (!bytes.ok()) return Error(bytes.status().message());
      input = *std::move(bytes);
    }
    auto ids = tokenizer.Encode(input, Flag(request, "add_special_tokens", true));
    if (!ids.ok()) return Error(ids.status().message());
    return Ids(*ids);
  }
  const bool skip = Flag(request, "skip_special_tokens", false);
  if (const JsonValue* array = request.Find("decode")) {
    auto ids = ReadIds(*array);
    if (!ids.ok()) return Error(ids.status().message());
    auto text = tokenizer.Decode(*ids, skip);
    if (!text.ok()) return Error(text.status().message());
    JsonValue v = JsonValue::MakeObject();
    v.Set("text", JsonValue::String(*text));
    return v;
  }
  if (const JsonValue* array = request.Find("stream")) {
    auto ids = ReadIds(*array);
    if (!ids.ok()) return Error(ids.status().message());
    StreamingDecoder stream(tokenizer, skip);
    JsonValue::Array pieces;
    for (int32_t id : *ids) {
      auto piece = stream.Push(id);
      if (!piece.ok()) return Error(piece.status().message());
      pieces.push_back(JsonValue::String(*piece));
    }
    pieces.push_back(JsonValue::String(stream.Flush()));
    JsonValue v = JsonValue::MakeObject();
    v.Set("pieces", JsonValue::MakeArray(std::move(pieces)));
    return v;
  }
  if (request.Find("info")) {
    auto optional_id = [](std::optional<int32_t> id) {
      return id ? JsonValue::Integer(*id) : JsonValue::Null();
    };
    JsonValue v = JsonValue::MakeObject();
    v.Set("vocab_size", JsonValue::Integer(tokenizer.vocab_size()));
    v.Set("bos_id", optional_id(tokenizer.bos_id()));
    v.Set("eos_id", optional_id(tokenizer.eos_id()));
    return v;
  }
  return Error("unknown request (expected encode, encode_hex, decode, stream or info)");
}

int Bench(const Tokenizer& tokenizer, const std::string& path, int repeat) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "kbitd_tokenize: cannot open " << path << "\n";
    return 1;
  }
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (std::string line; std::getline(in, line);) {
    bytes += line.size();
    lines.push_back(std::move(line));
  }
  size_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeat; ++r) {
    for (const std::string& line : lines) {
      auto ids = tokenizer.Encode(line, false);
      if (!ids.ok()) {
        std::cerr << "kbitd_tokenize: " << ids.status() << "\n";
        return 1;
      }
      tokens += ids->size();
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double total = static_cast<double>(bytes) * repeat;
  std::printf("{\"bytes\": %.0f, \"tokens\": %zu, \"seconds\": %.6f, \"mb_per_s\": %.3f}\n", total,
              tokens, seconds, total / 1e6 / seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, bench_path;
  int repeat = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--tokenizer" && i + 1 < argc) {
      tokenizer_path = argv[++i];
    } else if (arg == "--bench" && i + 1 < argc) {
      bench_path = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      std::cerr << "usage: kbitd_tokenize --tokenizer tokenizer.json [--bench FILE [--repeat N]]\n";
      return 2;
    }
  }
  if (tokenizer_path.empty()) {
    std::cerr << "kbitd_tokenize: --tokenizer is required\n";
    return 2;
  }
  auto tokenizer = Tokenizer::FromFile(tokenizer_path);
  if (!tokenizer.ok()) {
    std::cerr << "kbitd_tokenize: " << tokenizer.status() << "\n";
    return 1;
  }
  if (!bench_path.empty()) return Bench(**tokenizer, bench_path, repeat);
  for (std::string line; std::getline(std::cin, line);) {
    if (line.empty()) continue;
    auto request = kbitd::ParseJson(line);
    const JsonValue reply = request.ok()
                                ? Handle(**tokenizer, *request)
                                : Error(absl::StrCat("bad request: ", request.status().message()));
    std::cout << reply.Write() << "\n" << std::flush;
  }
  return 0;
}
