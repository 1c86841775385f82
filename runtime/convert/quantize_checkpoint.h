// Quantizes a Hugging Face checkpoint folder into the layout transformers + bitsandbytes save
// (so `from_pretrained` loads it with no quantization_config argument): every Linear weight
// (IsQuantizableLinearWeight) not skipped becomes bitsandbytes' state-dict tensors
// (quant::QuantState; bnb-spec §5.2, §6.3), everything else is copied unchanged, config.json gains
// transformers' exact "quantization_config" (bnb-spec §7.1), tokenizer and other side files are
// copied. One tensor at a time: host memory stays near the largest tensor. The output folder is
// staged next to `out_dir` and renamed into place only when complete.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/convert/checkpoint_output.h"
#include "runtime/convert/convert_progress.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {

struct QuantizeCheckpointOptions {
  // load_in_4bit (nf4/fp4, double quant, blocksize, storage, compute dtype) or load_in_8bit.
  // llm_int8_skip_modules unset means transformers' default, {"lm_head"}.
  QuantizationConfig config;
  ShardedCheckpointWriter::Options output;
  ConvertProgressFn progress;  // may be empty
};

// Errors name the file and tensor: corrupt or truncated safetensors, unsupported dtypes, shapes
// bitsandbytes cannot store, NaN/Inf weights, an already quantized input, an existing `out_dir`.
absl::StatusOr<ConvertSummary> QuantizeCheckpoint(const std::string& in_dir,
                                                  const std::string& out_dir,
                                                  const QuantizeCheckpointOptions& options);

// True for "<module>.weight" of rank 2 whose module leaf is a projection transformers replaces by
// a bitsandbytes Linear in the supported decoder families (Llama, Mistral, Qwen2/3, Gemma, Phi-3,
// GPT-NeoX, Falcon, ...): q/k/v/o_proj, qkv_proj, gate/up/down_proj, gate_up_proj, out_proj,
// fc1/fc2, w1/w2/w3, dense*, query_key_value, lm_head. Embeddings and norms never match.
bool IsQuantizableLinearWeight(std::string_view name, const SafetensorsTensorInfo& info);

}  // namespace kbitd::runtime
