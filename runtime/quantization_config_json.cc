#include "runtime/quantization_config_json.h"

namespace kbitd::runtime {

JsonValue QuantizationConfigToJson(const QuantizationConfig& config) {
  JsonValue skip = JsonValue::Null();
  if (config.llm_int8_skip_modules) {
    JsonValue::Array names;
    for (const std::string& name : *config.llm_int8_skip_modules) {
      names.push_back(JsonValue::String(name));
    }
    skip = JsonValue::MakeArray(std::move(names));
  }
  auto dtype = [](ScalarType type) { return JsonValue::String(std::string(TorchDtypeName(type))); };
  // Insertion order follows BitsAndBytesConfig.__dict__; writers sort the keys anyway.
  return JsonValue::MakeObject({
      {"quant_method", JsonValue::String("bitsandbytes")},
      {"_load_in_8bit", JsonValue::Bool(config.load_in_8bit)},
      {"_load_in_4bit", JsonValue::Bool(config.load_in_4bit)},
      {"llm_int8_threshold", JsonValue::Number(config.llm_int8_threshold)},
      {"llm_int8_skip_modules", std::move(skip)},
      {"llm_int8_enable_fp32_cpu_offload",
       JsonValue::Bool(config.llm_int8_enable_fp32_cpu_offload)},
      {"llm_int8_has_fp16_weight", JsonValue::Bool(config.llm_int8_has_fp16_weight)},
      {"bnb_4bit_quant_type", JsonValue::String(config.bnb_4bit_quant_type)},
      {"bnb_4bit_use_double_quant", JsonValue::Bool(config.bnb_4bit_use_double_quant)},
      {"bnb_4bit_compute_dtype", dtype(config.bnb_4bit_compute_dtype)},
      {"bnb_4bit_quant_storage", dtype(config.bnb_4bit_quant_storage)},
      {"load_in_4bit", JsonValue::Bool(config.load_in_4bit)},
      {"load_in_8bit", JsonValue::Bool(config.load_in_8bit)},
  });
}

std::string WriteHfConfigJson(const JsonValue& config) {
  JsonValue::WriteOptions options;
  options.indent = 2;
  options.sort_keys = true;
  return config.Write(options) + "\n";
}

}  // namespace kbitd::runtime
