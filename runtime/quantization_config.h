// transformers' BitsAndBytesConfig (field names and defaults as transformers writes them into
// config.json "quantization_config"; bnb-spec §7.1). Used both for a checkpoint that is already
// quantized and for quantize-on-load requests.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/json.h"

namespace kbitd::runtime {

struct QuantizationConfig {
  bool load_in_4bit = false;
  bool load_in_8bit = false;
  std::string bnb_4bit_quant_type = "fp4";  // "nf4" or "fp4" (transformers' default is fp4)
  bool bnb_4bit_use_double_quant = false;
  // Dtype activations are computed in; transformers' default (None) is float32.
  ScalarType bnb_4bit_compute_dtype = ScalarType::kFloat32;
  ScalarType bnb_4bit_quant_storage = ScalarType::kUInt8;
  float llm_int8_threshold = 6.0f;
  // Replaces the default skip list (output embedding, "lm_head") when set, also for 4-bit.
  std::optional<std::vector<std::string>> llm_int8_skip_modules;
  bool llm_int8_enable_fp32_cpu_offload = false;
  bool llm_int8_has_fp16_weight = false;
  int64_t blocksize = 64;  // not a transformers field: bnb's Linear4bit default, fixed at 64

  bool quantized() const { return load_in_4bit || load_in_8bit; }
};

// Parses a "quantization_config" object. quant_method must be "bitsandbytes" (others are
// UNIMPLEMENTED naming the method); unknown keys are ignored as transformers does; wrong types and
// values (both 4- and 8-bit, unknown quant type / dtype, negative threshold) are INVALID_ARGUMENT
// naming the field.
absl::StatusOr<QuantizationConfig> ParseQuantizationConfig(const JsonValue& json);

// Checks a config built in code (e.g. from a load request) with the same rules.
absl::Status ValidateQuantizationConfig(const QuantizationConfig& config);

// transformers' module matching (bnb-spec §7.2): skipped if the leaf name is listed, or a listed
// key K satisfies K == name, (K + ".") occurs in name, or name ends with "." + K. `name` is a
// module name without ".weight".
bool IsModuleSkipped(const std::vector<std::string>& skip_modules, const std::string& name);

}  // namespace kbitd::runtime
