// `kbitq eval`: held-out perplexity of a checkpoint in each weight format kbitd serves, with the
// protocol of runtime/perplexity.h, printed as a table (and optionally JSON) that docs/quality.md
// sets beside transformers + bitsandbytes' figures for the same text.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace kbitd::runtime {

struct EvalOptions {
  std::string model_dir;
  std::vector<std::string> text_files;  // each is encoded and windowed on its own
  // Formats: none, nf4, nf4-dq, fp4, fp4-dq, int8.
  std::vector<std::string> formats = {"none", "nf4", "nf4-dq", "fp4", "int8"};
  std::optional<ScalarType> compute_dtype;  // nullopt: the checkpoint's torch_dtype
  int32_t window = 512;
  int32_t num_threads = 0;
  std::function<bool(const std::string& format, int64_t done, int64_t total)> progress;
};

struct EvalRow {
  std::string format;
  double perplexity = 0;
  double mean_nll = 0;
  int64_t tokens = 0;
  int64_t parameters = 0;
  int64_t weight_bytes = 0;  // resident weights, quantized where quantized
  double load_seconds = 0;
  double eval_seconds = 0;
};

// INVALID_ARGUMENT for an unknown format, an unreadable or non-UTF-8 text file (naming it), or
// a text too short to score; loader errors pass through naming the checkpoint file at fault.
absl::StatusOr<std::vector<EvalRow>> RunEval(const EvalOptions& options);

std::string FormatEvalTable(const std::vector<EvalRow>& rows);
std::string EvalRowsToJson(const EvalOptions& options, const std::vector<EvalRow>& rows);

}  // namespace kbitd::runtime
