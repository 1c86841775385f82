#include "runtime/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/json.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

// Reads an optional field; `missing` leaves *out unchanged. Errors name the file and field.
class FieldReader {
 public:
  FieldReader(const JsonValue& json, std::string source)
      : json_(json), source_(std::move(source)) {}

  absl::Status Error(const std::string& field, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", field, "\" ", what));
  }
  const JsonValue* Find(const char* key) const {
    const JsonValue* v = json_.Find(key);
    return (v == nullptr || v->is_null()) ? nullptr : v;
  }
  absl::Status Int(const char* key, int64_t* out, bool required = false, int64_t min = 1) const {
    const JsonValue* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    if (!v->is_integer()) return Error(key, "must be an integer");
    if (v->integer_value() < min)
      return Error(key, absl::StrCat("= ", v->integer_value(), " must be >= ", min));
    *out = v->integer_value();
    return absl::OkStatus();
  }
  absl::Status Number(const char* key, double* out, bool positive = true) const {
    const JsonValue* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return Error(key, "must be a number");
    if (positive && !(v->number_value() > 0)) return Error(key, "must be > 0");
    *out = v->number_value();
    return absl::OkStatus();
  }
  absl::Status Bool(const char* key, bool* out) const {
    const JsonValue* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_bool()) return Error(key, "must be true or false");
    *out = v->bool_value();
    return absl::OkStatus();
  }
  const std::string& source() const { return source_; }

 private:
  const JsonValue& json_;
  std::string source_;
};

// transformers <= 4.x: "rope_theta" + "rope_scaling" {"type"|"rope_type", ...}; transformers 5:
// "rope_parameters" {"rope_type", "rope_theta", ...} (modeling_rope_utils).
absl::Status ParseRope(const JsonValue& json, const std::string& source, ModelConfig* config) {
  FieldReader top(json, source);
  KBITD_RETURN_IF_ERROR(top.Number("rope_theta", &config->rope_theta));
  const JsonValue* rope = top.Find("rope_parameters");
  const char* rope_field = "rope_parameters";
  if (rope == nullptr) {
    rope = top.Find("rope_scaling");
    rope_field = "rope_scaling";
  }
  if (rope == nullptr) return absl::OkStatus();
  if (!rope->is_object()) return top.Error(rope_field, "must be an object");
  FieldReader r(*rope, absl::StrCat(source, ": ", rope_field));
  KBITD_RETURN_IF_ERROR(r.Number("rope_theta", &config->rope_theta));
  const JsonValue* type = r.Find("rope_type");
  if (type == nullptr) type = r.Find("type");
  std::string name = "default";
  if (type != nullptr) {
    if (!type->is_string()) return r.Error("rope_type", "must be a string");
    name = type->string_value();
  }
  RopeScaling& s = config->rope_scaling;
  if (name == "default") {
    s.type = RopeScaling::Type::kNone;
    return absl::OkStatus();
  }
  if (name != "linear" && name != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": ", rope_field, " type \"", name,
                     "\" is not supported (supported: default, linear, llama3)"));
  }
  if (r.Find("factor") == nullptr) return r.Error("factor", "is missing");
  KBITD_RETURN_IF_ERROR(r.Number("factor", &s.factor));
  if (name == "linear") {
    s.type = RopeScaling::Type::kLinear;
    return absl::OkStatus();
  }
  s.type = RopeScaling::Type::kLlama3;
  KBITD_RETURN_IF_ERROR(r.Number("low_freq_factor", &s.low_freq_factor));
  KBITD_RETURN_IF_ERROR(r.Number("high_freq_factor", &s.high_freq_factor));
  KBITD_RETURN_IF_ERROR(
      r.Int("original_max_position_embeddings", &s.original_max_position_embeddings));
  if (!(s.high_freq_factor > s.low_freq_factor)) {
    return r.Error("high_freq_factor", "must be greater than low_freq_factor");
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const FieldReader& reader, const char* key, std::vector<int64_t>* out) {
  const JsonValue* v = reader.Find(key);
  if (v == nullptr) return absl::OkStatus();
  if (v->is_integer()) {
    out->push_back(v->integer_value());
    return absl::OkStatus();
  }
  if (!v->is_array()) return reader.Error(key, "must be an integer or a list of integers");
  for (const JsonValue& item : v->array()) {
    if (!item.is_integer()) return reader.Error(key, "must be an integer or a list of integers");
    out->push_back(item.integer_value());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  const std::string src(source);
  absl::StatusOr<JsonValue> parsed = ParseJson(json_text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": ", parsed.status().message()));
  }
  const JsonValue& json = *parsed;
  if (!json.is_object()) return absl::InvalidArgumentError(src + ": must be a JSON object");
  FieldReader f(json, src);
  ModelConfig c;
  const JsonValue* type = f.Find("model_type");
  if (type == nullptr || !type->is_string())
    return f.Error("model_type", "is missing or not a string");
  c.model_type = type->string_value();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return absl::UnimplementedError(
        absl::StrCat(src, ": model_type \"", c.model_type,
                     "\" is not supported (supported: llama, mistral, qwen2)"));
  }
  if (const JsonValue* archs = f.Find("architectures"); archs != nullptr && archs->is_array() &&
                                                        !archs->array().empty() &&
                                                        archs->array()[0].is_string()) {
    c.architecture = archs->array()[0].string_value();
    static const char* kSupported[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                       "Qwen2ForCausalLM"};
    bool ok = false;
    for (const char* a : kSupported) ok |= c.architecture == a;
    if (!ok) {
      return absl::UnimplementedError(
          absl::StrCat(src, ": architecture \"", c.architecture,
                       "\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM, "
                       "Qwen2ForCausalLM)"));
    }
  }
  KBITD_RETURN_IF_ERROR(f.Int("vocab_size", &c.vocab_size, true));
  KBITD_RETURN_IF_ERROR(f.Int("hidden_size", &c.hidden_size, true));
  KBITD_RETURN_IF_ERROR(f.Int("intermediate_size", &c.intermediate_size, true));
  KBITD_RETURN_IF_ERROR(f.Int("num_hidden_layers", &c.num_hidden_layers, true));
  KBITD_RETURN_IF_ERROR(f.Int("num_attention_heads", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  KBITD_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.Error("num_key_value_heads",
                   absl::StrCat("= ", c.num_key_value_heads,
                                " must divide num_attention_heads = ", c.num_attention_heads));
  }
  if (f.Find("head_dim") == nullptr && c.hidden_size % c.num_attention_heads != 0) {
    return f.Error("hidden_size",
                   "must be divisible by num_attention_heads when head_dim is absent");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  KBITD_RETURN_IF_ERROR(f.Int("head_dim", &c.head_dim));
  if (c.head_dim % 2 != 0) return f.Error("head_dim", "must be even (rotary embedding)");
  KBITD_RETURN_IF_ERROR(f.Int("max_position_embeddings", &c.max_position_embeddings));
  KBITD_RETURN_IF_ERROR(f.Number("rms_norm_eps", &c.rms_norm_eps));
  KBITD_RETURN_IF_ERROR(ParseRope(json, src, &c));
  KBITD_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2Attention: q/k/v always have a bias, o_proj never
    bool use_sliding = false;
    KBITD_RETURN_IF_ERROR(f.Bool("use_sliding_window", &use_sliding));
    if (use_sliding) {
      int64_t window = 0;
      KBITD_RETURN_IF_ERROR(f.Int("sliding_window", &window));
      if (window > 0) c.sliding_window = window;
    }
  } else if (c.model_type == "llama") {
    KBITD_RETURN_IF_ERROR(f.Bool("attention_bias", &c.attention_bias));
    c.o_proj_bias = c.attention_bias;
    KBITD_RETURN_IF_ERROR(f.Bool("mlp_bias", &c.mlp_bias));
  } else {  // mistral
    int64_t window = 0;
    KBITD_RETURN_IF_ERROR(f.Int("sliding_window", &window));
    if (window > 0) c.sliding_window = window;
  }
  if (const JsonValue* act = f.Find("hidden_act"); act != nullptr) {
    if (!act->is_string()) return f.Error("hidden_act", "must be a string");
    c.hidden_act = act->string_value();
    if (c.hidden_act != "silu" && c.hidden_act != "swish") {
      return absl::UnimplementedError(
          absl::StrCat(src, ": hidden_act \"", c.hidden_act, "\" is not supported (only silu)"));
    }
  }
  // transformers 5 writes "dtype", 4.x "torch_dtype".
  const JsonValue* dtype = f.Find("dtype");
  if (dtype == nullptr) dtype = f.Find("torch_dtype");
  if (dtype != nullptr) {
    if (!dtype->is_string()) return f.Error("torch_dtype", "must be a dtype name");
    absl::StatusOr<ScalarType> t = ScalarTypeFromTorchName(dtype->string_value());
    if (!t.ok() || !IsFloatingPoint(*t) || *t == ScalarType::kFloat64) {
      return f.Error("torch_dtype", absl::StrCat("\"", dtype->string_value(),
                                                 "\" is not float32, float16 or bfloat16"));
    }
    c.torch_dtype = *t;
  }
  if (const JsonValue* bos = f.Find("bos_token_id"); bos != nullptr && bos->is_integer()) {
    c.bos_token_id = bos->integer_value();
  }
  KBITD_RETURN_IF_ERROR(ParseTokenIds(f, "eos_token_id", &c.eos_token_ids));
  if (const JsonValue* q = f.Find("quantization_config"); q != nullptr) {
    absl::StatusOr<QuantizationConfig> qc = ParseQuantizationConfig(*q);
    if (!qc.ok()) {
      return absl::Status(qc.status().code(), absl::StrCat(src, ": ", qc.status().message()));
    }
    c.quantization = *qc;
  }
  return c;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path) {
  KBITD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

}  // namespace kbitd::runtime
