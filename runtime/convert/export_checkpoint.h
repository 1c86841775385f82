// Writes a plain Hugging Face checkpoint from a loaded Model, whatever it was loaded from (a
// pre-quantized checkpoint or one quantized on load): every linear layer dequantized with
// Model::DequantizeLinear to "<module>.weight" (and its bias to "<module>.bias"), the embedding
// and norms converted from their resident copies, config.json taken from the model's source
// folder without "quantization_config", and the tokenizer and generation files copied. Unlike
// DequantizeCheckpoint (runtime/convert/dequantize_checkpoint.h) it never re-reads the weights from
// disk, so it writes exactly what the served model computes with. The folder is staged and renamed
// into place when complete: a failed or cancelled export leaves nothing at the destination.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/convert/checkpoint_output.h"
#include "runtime/convert/convert_progress.h"
#include "runtime/model.h"

namespace kbitd::runtime {

struct ExportCheckpointOptions {
  // Dtype of every tensor written and of config.json's dtype. nullopt: the model's original
  // dtype (config.json's torch_dtype / dtype, the dtype its unquantized weights had), or bfloat16
  // when that is not a floating-point dtype.
  std::optional<ScalarType> dtype;
  ShardedCheckpointWriter::Options output;
  ConvertProgressFn progress;  // may be empty; returning false cancels (CANCELLED)
};

// The dtype an export with `requested` writes (see ExportCheckpointOptions::dtype).
ScalarType ExportDtype(const Model& model, std::optional<ScalarType> requested);

// Exports `model` to the new folder `out_dir` (ALREADY_EXISTS if it exists). `source_dir` is the
// folder the model was loaded from; its config.json and side files are carried over.
// summary.converted counts linear weights, summary.copied the other tensors.
absl::StatusOr<ConvertSummary> ExportCheckpoint(const Model& model, const std::string& source_dir,
                                                const std::string& out_dir,
                                                const ExportCheckpointOptions& options);

}  // namespace kbitd::runtime
