#include "runtime/quantization_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("quantization_config.", field, ": ", what));
}

absl::Status ReadBool(const JsonValue& json, const char* key, bool* out) {
  const JsonValue* v = json.Find(key);
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_bool()) return FieldError(key, "must be true or false");
  *out = v->bool_value();
  return absl::OkStatus();
}

absl::Status ReadDtype(const JsonValue& json, const char* key, ScalarType* out) {
  const JsonValue* v = json.Find(key);
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_string()) return FieldError(key, "must be a dtype name string");
  absl::StatusOr<ScalarType> type = ScalarTypeFromTorchName(v->string_value());
  if (!type.ok()) return FieldError(key, std::string(type.status().message()));
  *out = *type;
  return absl::OkStatus();
}

absl::Status ReadInt(const JsonValue& json, const char* key, int64_t* out) {
  const JsonValue* v = json.Find(key);
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_integer()) return FieldError(key, "must be an integer");
  *out = v->integer_value();
  return absl::OkStatus();
}

absl::Status ReadString(const JsonValue& json, const char* key, std::string* out) {
  const JsonValue* v = json.Find(key);
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_string()) return FieldError(key, "must be a string");
  *out = v->string_value();
  return absl::OkStatus();
}

// transformers' GPTQConfig as optimum / GPTQModel write it into config.json.
absl::StatusOr<GptqConfig> ParseGptqConfig(const JsonValue& json) {
  GptqConfig g;
  const JsonValue* bits = json.Find("bits");
  if (bits == nullptr || bits->is_null()) return FieldError("bits", "missing (GPTQ needs it)");
  int64_t bits_value = 0;
  KBITD_RETURN_IF_ERROR(ReadInt(json, "bits", &bits_value));
  if (bits_value < 1 || bits_value > 32) {
    return FieldError("bits", absl::StrCat(bits_value, " is not supported (2, 3, 4 or 8)"));
  }
  g.bits = static_cast<int>(bits_value);
  KBITD_RETURN_IF_ERROR(ReadInt(json, "group_size", &g.group_size));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "desc_act", &g.desc_act));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "sym", &g.sym));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "lm_head", &g.lm_head));
  // Older GPTQModel versions name it "format".
  const char* format_key = json.Find("checkpoint_format") != nullptr ? "checkpoint_format"
                           : json.Find("format") != nullptr          ? "format"
                                                                     : "checkpoint_format";
  KBITD_RETURN_IF_ERROR(ReadString(json, format_key, &g.checkpoint_format));
  std::string pack_dtype = "int32";
  KBITD_RETURN_IF_ERROR(ReadString(json, "pack_dtype", &pack_dtype));
  if (pack_dtype != "int32") {
    return FieldError("pack_dtype",
                      absl::StrCat("\"", pack_dtype, "\" is not supported (GPTQ words are int32)"));
  }
  if (const JsonValue* d = json.Find("dynamic");
      d != nullptr && !d->is_null() && !(d->is_object() && d->object().empty())) {
    return absl::UnimplementedError(
        "quantization_config.dynamic: per-module GPTQ overrides are not supported");
  }
  return g;
}

}  // namespace

quant::GptqParams GptqConfig::Params() const {
  quant::GptqParams p;
  p.bits = bits;
  p.group_size = group_size;
  p.zero_format =
      checkpoint_format == "gptq_v2" ? quant::GptqZeroFormat::kV2 : quant::GptqZeroFormat::kV1;
  return p;
}

absl::Status ValidateQuantizationConfig(const QuantizationConfig& c) {
  if (c.gptq.has_value()) {
    const GptqConfig& g = *c.gptq;
    if (absl::Status s = quant::ValidateGptqBits(g.bits); !s.ok()) {
      return FieldError("bits", absl::StrCat(g.bits, " is not supported (2, 3, 4 or 8)"));
    }
    if (absl::Status s = quant::ValidateGptqGroupSize(g.group_size); !s.ok()) {
      return FieldError("group_size", absl::StrCat(g.group_size, " must be positive or -1"));
    }
    if (absl::Status s = quant::GptqZeroFormatFromName(g.checkpoint_format).status(); !s.ok()) {
      return FieldError("checkpoint_format", absl::StrCat("\"", g.checkpoint_format,
                                                          "\" is not \"gptq\" or \"gptq_v2\""));
    }
    if (c.load_in_4bit || c.load_in_8bit) {
      return FieldError("quant_method", "gptq with load_in_4bit / load_in_8bit");
    }
  }
  if (c.load_in_4bit && c.load_in_8bit) {
    return FieldError("load_in_4bit", "load_in_4bit and load_in_8bit are both true");
  }
  if (c.bnb_4bit_quant_type != "nf4" && c.bnb_4bit_quant_type != "fp4") {
    return FieldError("bnb_4bit_quant_type",
                      absl::StrCat("\"", c.bnb_4bit_quant_type, "\" is not \"nf4\" or \"fp4\""));
  }
  ScalarType cd = c.bnb_4bit_compute_dtype;
  if (cd != ScalarType::kFloat32 && cd != ScalarType::kFloat16 && cd != ScalarType::kBFloat16) {
    return FieldError("bnb_4bit_compute_dtype", "must be float32, float16 or bfloat16");
  }
  ScalarType qs = c.bnb_4bit_quant_storage;
  if (qs != ScalarType::kUInt8 && qs != ScalarType::kInt8 && qs != ScalarType::kFloat16 &&
      qs != ScalarType::kBFloat16 && qs != ScalarType::kFloat32 && qs != ScalarType::kFloat64) {
    return FieldError("bnb_4bit_quant_storage",
                      "must be uint8, int8, float16, bfloat16, float32 or float64");
  }
  if (!std::isfinite(c.llm_int8_threshold) || c.llm_int8_threshold < 0) {
    return FieldError("llm_int8_threshold", absl::StrCat(c.llm_int8_threshold, " must be >= 0"));
  }
  if (c.blocksize < 32 || c.blocksize > 4096 || (c.blocksize & (c.blocksize - 1)) != 0) {
    return FieldError("blocksize",
                      absl::StrCat(c.blocksize, " must be a power of two in [32, 4096]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizationConfig> ParseQuantizationConfig(const JsonValue& json) {
  if (!json.is_object()) return FieldError("", "must be a JSON object");
  QuantizationConfig c;
  if (const JsonValue* m = json.Find("quant_method"); m != nullptr && !m->is_null()) {
    if (!m->is_string()) return FieldError("quant_method", "must be a string");
    if (m->string_value() == "gptq") {
      KBITD_ASSIGN_OR_RETURN(c.gptq, ParseGptqConfig(json));
      KBITD_RETURN_IF_ERROR(ValidateQuantizationConfig(c));
      return c;
    }
    if (m->string_value() != "bitsandbytes") {
      return absl::UnimplementedError(
          absl::StrCat("quantization_config.quant_method \"", m->string_value(),
                       "\" is not supported (\"bitsandbytes\" or \"gptq\")"));
    }
  }
  KBITD_RETURN_IF_ERROR(ReadBool(json, "load_in_4bit", &c.load_in_4bit));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "load_in_8bit", &c.load_in_8bit));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "bnb_4bit_use_double_quant", &c.bnb_4bit_use_double_quant));
  KBITD_RETURN_IF_ERROR(
      ReadBool(json, "llm_int8_enable_fp32_cpu_offload", &c.llm_int8_enable_fp32_cpu_offload));
  KBITD_RETURN_IF_ERROR(ReadBool(json, "llm_int8_has_fp16_weight", &c.llm_int8_has_fp16_weight));
  KBITD_RETURN_IF_ERROR(ReadDtype(json, "bnb_4bit_compute_dtype", &c.bnb_4bit_compute_dtype));
  KBITD_RETURN_IF_ERROR(ReadDtype(json, "bnb_4bit_quant_storage", &c.bnb_4bit_quant_storage));
  if (const JsonValue* v = json.Find("bnb_4bit_quant_type"); v != nullptr && !v->is_null()) {
    if (!v->is_string()) return FieldError("bnb_4bit_quant_type", "must be a string");
    c.bnb_4bit_quant_type = v->string_value();
  }
  if (const JsonValue* v = json.Find("llm_int8_threshold"); v != nullptr && !v->is_null()) {
    if (!v->is_number()) return FieldError("llm_int8_threshold", "must be a number");
    c.llm_int8_threshold = static_cast<float>(v->number_value());
  }
  if (const JsonValue* v = json.Find("llm_int8_skip_modules"); v != nullptr && !v->is_null()) {
    if (!v->is_array()) return FieldError("llm_int8_skip_modules", "must be a list of strings");
    std::vector<std::string> names;
    for (const JsonValue& item : v->array()) {
      if (!item.is_string())
        return FieldError("llm_int8_skip_modules", "must be a list of strings");
      names.push_back(item.string_value());
    }
    c.llm_int8_skip_modules = std::move(names);
  }
  KBITD_RETURN_IF_ERROR(ValidateQuantizationConfig(c));
  return c;
}

absl::StatusOr<std::optional<quant::GptqParams>> GptqParamsOfHfConfig(const JsonValue& hf_config) {
  const JsonValue* q = hf_config.Find("quantization_config");
  if (q == nullptr || q->is_null()) return std::nullopt;
  const JsonValue* method = q->is_object() ? q->Find("quant_method") : nullptr;
  if (method == nullptr || !method->is_string() || method->string_value() != "gptq") {
    return std::nullopt;
  }
  KBITD_ASSIGN_OR_RETURN(QuantizationConfig config, ParseQuantizationConfig(*q));
  return config.gptq->Params();
}

bool IsModuleSkipped(const std::vector<std::string>& skip_modules, const std::string& name) {
  std::string leaf = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
  for (const std::string& key : skip_modules) {
    if (key == leaf || key == name) return true;
    if (name.find(key + ".") != std::string::npos) return true;
    // A dotted key also matches as a module-name suffix ("mlp.down_proj").
    if (name.size() > key.size() && name.compare(name.size() - key.size(), key.size(), key) == 0 &&
        name[name.size() - key.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

}  // namespace kbitd::runtime
