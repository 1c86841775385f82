// Per-tensor storage report of a checkpoint (plain, bitsandbytes-quantized or GPTQ, whose bits and
// group size come from config.json): format, parameter count, bytes and bits per parameter of
// every weight, and the total saving against storing all parameters in fp16.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kbitd::runtime {

struct ReportEntry {
  std::string name;    // a plain tensor's name, or a quantized module's weight "<module>.weight"
  std::string format;  // "bf16", "f32", ..., "nf4", "nf4+dq", "fp4", "int8", "gptq4" (bits)
  std::vector<int64_t> shape;  // logical (unquantized) shape
  int64_t params = 0;
  uint64_t bytes = 0;  // all tensors stored for it (packed weight, absmax, maps, quant state;
                       // GPTQ: qweight, qzeros, scales, g_idx)
  double bits_per_param() const { return params ? 8.0 * bytes / params : 0.0; }
};

struct CheckpointReport {
  std::string path;
  std::string quantization;  // "none", "nf4", "nf4+dq", "fp4", "int8", "gptq4", ... (tensors found)
  std::vector<ReportEntry> entries;  // sorted by name
  int64_t total_params = 0;
  uint64_t total_bytes = 0;
  uint64_t fp16_bytes() const { return static_cast<uint64_t>(total_params) * 2; }
  double saving_vs_fp16() const {  // fraction of the fp16 size saved (negative if larger)
    return total_params ? 1.0 - static_cast<double>(total_bytes) / fp16_bytes() : 0.0;
  }
};

absl::StatusOr<CheckpointReport> InspectCheckpoint(const std::string& path);

// A human-readable table and a JSON rendering of the report.
std::string FormatReport(const CheckpointReport& report);
std::string ReportToJson(const CheckpointReport& report);

}  // namespace kbitd::runtime
