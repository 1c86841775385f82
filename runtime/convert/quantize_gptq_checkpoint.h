// Quantizes a Hugging Face checkpoint folder into the GPTQ layout GPTQModel saves (and
// transformers' GPTQ path, optimum and kbitd read): every Linear weight (IsQuantizableLinearWeight)
// except lm_head becomes <module>.qweight/.qzeros/.scales/.g_idx (quant/gptq.h), everything else is
// copied unchanged, config.json gains quantization_config {quant_method "gptq", checkpoint_format
// "gptq", bits, group_size, desc_act, sym, ...}, tokenizer and side files are copied. Weights are
// quantized round-to-nearest, or with GPTQ where `hessians` has the module's H = 2 X^T X.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/gptq_quantize.h"
#include "runtime/convert/checkpoint_output.h"
#include "runtime/convert/convert_progress.h"

namespace kbitd::runtime {

struct QuantizeGptqCheckpointOptions {
  quant::GptqQuantizeOptions quant;
  // Module name ("model.layers.0.mlp.up_proj") -> H [in, in]; a module without one is quantized
  // round-to-nearest. Not owned; may be null (round-to-nearest everywhere).
  const std::map<std::string, std::vector<double>>* hessians = nullptr;
  ShardedCheckpointWriter::Options output;
  ConvertProgressFn progress;  // may be empty
};

// Errors name the file and tensor: unsupported dtypes, shapes GPTQ cannot store (in_features not
// a multiple of 32 or of the group size, out_features * bits not a multiple of 32), non-finite
// weights, an already quantized input, an existing `out_dir`.
absl::StatusOr<ConvertSummary> QuantizeGptqCheckpoint(const std::string& in_dir,
                                                      const std::string& out_dir,
                                                      const QuantizeGptqCheckpointOptions& options);

}  // namespace kbitd::runtime
