// Writes a QuantizationConfig as transformers' BitsAndBytesConfig.to_dict() does: all 13 keys
// (bnb-spec §7.1; transformers src/transformers/utils/quantization_config.py), dtypes as torch
// names without "torch.", llm_int8_skip_modules null unless set. config.json embeds it under
// "quantization_config" and is written with indent 2 and sorted keys (WriteHfConfigJson).
#pragma once

#include <string>

#include "common/json.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {

JsonValue QuantizationConfigToJson(const QuantizationConfig& config);

// json.dumps(config, indent=2, sort_keys=True) + "\n", as PretrainedConfig.to_json_file writes.
std::string WriteHfConfigJson(const JsonValue& config);

}  // namespace kbitd::runtime
