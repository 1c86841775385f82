// config.json "quantization_config": transformers' BitsAndBytesConfig (field names and defaults as
// transformers writes them; bnb-spec §7.1), used both for a checkpoint that is already quantized
// and for quantize-on-load requests, or a GPTQ checkpoint's GPTQConfig (quant_method "gptq", as
// transformers, optimum and GPTQModel write it; quant/gptq.h), which loads only as stored.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/json.h"
#include "quant/gptq.h"

namespace kbitd::runtime {

// quant_method "gptq": the fields that change how the tensors read (transformers' GPTQConfig).
struct GptqConfig {
  int bits = 4;                            // 2, 3, 4 or 8 (required in the JSON)
  int64_t group_size = 128;                // -1: one group of all input rows
  bool desc_act = false;                   // act order: g_idx is a permutation of the groups
  bool sym = true;                         // symmetric zero points (informational)
  std::string checkpoint_format = "gptq";  // "gptq" (zero - 1 stored) or "gptq_v2"
  bool lm_head = false;                    // GPTQModel: lm_head quantized too

  // What quant/ needs to read the tensors (checkpoint_format validated).
  quant::GptqParams Params() const;
};

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
  // Set for quant_method "gptq" (then every bitsandbytes field keeps its default).
  std::optional<GptqConfig> gptq;

  bool quantized() const { return load_in_4bit || load_in_8bit || gptq.has_value(); }
};

// Parses a "quantization_config" object. quant_method must be "bitsandbytes" or "gptq" (others are
// UNIMPLEMENTED naming the method); unknown keys are ignored as transformers does; wrong types and
// values (both 4- and 8-bit, unknown quant type / dtype, negative threshold; GPTQ bits other than
// 2/3/4/8, a missing bits, group_size 0 or below -1, a checkpoint_format other than "gptq" /
// "gptq_v2", a pack_dtype other than int32) are INVALID_ARGUMENT naming the field. GPTQModel's
// per-module "dynamic" overrides are UNIMPLEMENTED.
absl::StatusOr<QuantizationConfig> ParseQuantizationConfig(const JsonValue& json);

// The GPTQ parameters a config.json object declares in its quantization_config; nullopt when it
// declares none or another method (errors as ParseQuantizationConfig).
absl::StatusOr<std::optional<quant::GptqParams>> GptqParamsOfHfConfig(const JsonValue& hf_config);

// Checks a config built in code (e.g. from a load request) with the same rules.
absl::Status ValidateQuantizationConfig(const QuantizationConfig& config);

// transformers' module matching (bnb-spec §7.2): skipped if the leaf name is listed, or a listed
// key K satisfies K == name, (K + ".") occurs in name, or name ends with "." + K. `name` is a
// module name without ".weight".
bool IsModuleSkipped(const std::vector<std::string>& skip_modules, const std::string& name);

}  // namespace kbitd::runtime
