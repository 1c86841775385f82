// Writes a plain (unquantized) checkpoint from one saved by transformers + bitsandbytes, by kbitq
// or by a GPTQ tool: every quantized module (FindQuantizedModules; GPTQ read with config.json's
// quantization_config) is dequantized with quant/ to one "<module>.weight" tensor, other tensors
// are copied, config.json loses "quantization_config".
// One module at a time; the output folder is staged and renamed into place when complete.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/convert/checkpoint_output.h"
#include "runtime/convert/convert_progress.h"

namespace kbitd::runtime {

struct DequantizeCheckpointOptions {
  // Dtype of every floating-point tensor written (and config.json's dtype). nullopt: each
  // dequantized weight gets its original dtype (the quant state's; float16 for LLM.int8, which
  // quantizes from fp16, and for GPTQ, whose scales are fp16) and other tensors keep theirs.
  std::optional<ScalarType> dtype;
  ShardedCheckpointWriter::Options output;
  ConvertProgressFn progress;
};

absl::StatusOr<ConvertSummary> DequantizeCheckpoint(const std::string& in_dir,
                                                    const std::string& out_dir,
                                                    const DequantizeCheckpointOptions& options);

}  // namespace kbitd::runtime
