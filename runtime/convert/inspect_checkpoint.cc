#include "runtime/convert/inspect_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "runtime/checkpoint/bnb_checkpoint.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {
namespace {

std::string FormatOf(const quant::QuantState& state) {
  switch (state.type) {
    case quant::QuantType::kNf4:
      return state.nested ? "nf4+dq" : "nf4";
    case quant::QuantType::kFp4:
      return state.nested ? "fp4+dq" : "fp4";
    case quant::QuantType::kInt8Rowwise:
      return "int8";
    case quant::QuantType::kInt8Blockwise:
      return "int8-blockwise";
    case quant::QuantType::kGptq:
      return absl::StrCat("gptq", state.gptq ? state.gptq->params.bits : 0);
  }
  return "?";
}

}  // namespace

absl::StatusOr<CheckpointReport> InspectCheckpoint(const std::string& path) {
  KBITD_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(path));
  KBITD_ASSIGN_OR_RETURN(QuantizedLayout layout, FindQuantizedModules(*checkpoint));
  // GPTQ tensors read with config.json's bits and group size.
  std::optional<quant::GptqParams> gptq;
  const std::string config_path = (std::filesystem::path(path) / "config.json").string();
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    KBITD_ASSIGN_OR_RETURN(JsonValue hf_config, ReadJsonObjectFile(config_path));
    absl::StatusOr<std::optional<quant::GptqParams>> params = GptqParamsOfHfConfig(hf_config);
    if (!params.ok()) {
      return absl::Status(params.status().code(),
                          absl::StrCat(config_path, ": ", params.status().message()));
    }
    gptq = *params;
  }
  CheckpointReport report;
  report.path = path;
  std::set<std::string> formats;
  for (const QuantizedModule& module : layout.modules) {
    KBITD_ASSIGN_OR_RETURN(quant::QuantState state,
                           ReadQuantState(*checkpoint, module, gptq ? &*gptq : nullptr));
    ReportEntry entry;
    entry.name = module.prefix + ".weight";
    entry.format = FormatOf(state);
    entry.shape = state.shape;
    entry.params = state.numel();
    for (const std::string& name : module.tensors) {
      entry.bytes += (**checkpoint->Info(name)).size_bytes();
    }
    formats.insert(entry.format);
    report.entries.push_back(std::move(entry));
  }
  for (const std::string& name : layout.plain) {
    const SafetensorsTensorInfo& info = **checkpoint->Info(name);
    ReportEntry entry;
    entry.name = name;
    entry.format = absl::AsciiStrToLower(info.dtype_name);
    entry.shape = info.shape;
    entry.params = info.NumElements();
    entry.bytes = info.size_bytes();
    report.entries.push_back(std::move(entry));
  }
  std::sort(report.entries.begin(), report.entries.end(),
            [](const ReportEntry& a, const ReportEntry& b) { return a.name < b.name; });
  for (const ReportEntry& entry : report.entries) {
    report.total_params += entry.params;
    report.total_bytes += entry.bytes;
  }
  report.quantization = formats.empty() ? "none" : absl::StrJoin(formats, ",");
  return report;
}

std::string FormatReport(const CheckpointReport& report) {
  size_t width = 6;
  for (const ReportEntry& e : report.entries) width = std::max(width, e.name.size());
  std::string out = absl::StrFormat("%-*s  %-8s  %12s  %12s  %10s\n", width, "tensor", "format",
                                    "params", "bytes", "bits/param");
  for (const ReportEntry& e : report.entries) {
    absl::StrAppendFormat(&out, "%-*s  %-8s  %12d  %12d  %10.3f\n", width, e.name, e.format,
                          e.params, e.bytes, e.bits_per_param());
  }
  absl::StrAppendFormat(&out,
                        "total: %d params, %d bytes (%.2f MiB), %.3f bits/param; fp16 would take "
                        "%d bytes (%.2f MiB): %.1f%% saved; quantization: %s\n",
                        report.total_params, report.total_bytes, report.total_bytes / 1048576.0,
                        report.total_params ? 8.0 * report.total_bytes / report.total_params : 0.0,
                        report.fp16_bytes(), report.fp16_bytes() / 1048576.0,
                        100.0 * report.saving_vs_fp16(), report.quantization);
  return out;
}

std::string ReportToJson(const CheckpointReport& report) {
  JsonValue::Array entries;
  for (const ReportEntry& e : report.entries) {
    JsonValue::Array shape;
    for (int64_t d : e.shape) shape.push_back(JsonValue::Integer(d));
    entries.push_back(JsonValue::MakeObject({
        {"name", JsonValue::String(e.name)},
        {"format", JsonValue::String(e.format)},
        {"shape", JsonValue::MakeArray(std::move(shape))},
        {"params", JsonValue::Integer(e.params)},
        {"bytes", JsonValue::Integer(static_cast<int64_t>(e.bytes))},
        {"bits_per_param", JsonValue::Number(e.bits_per_param())},
    }));
  }
  JsonValue json = JsonValue::MakeObject({
      {"path", JsonValue::String(report.path)},
      {"quantization", JsonValue::String(report.quantization)},
      {"tensors", JsonValue::MakeArray(std::move(entries))},
      {"total_params", JsonValue::Integer(report.total_params)},
      {"total_bytes", JsonValue::Integer(static_cast<int64_t>(report.total_bytes))},
      {"fp16_bytes", JsonValue::Integer(static_cast<int64_t>(report.fp16_bytes()))},
      {"saving_vs_fp16", JsonValue::Number(report.saving_vs_fp16())},
  });
  JsonValue::WriteOptions options;
  options.indent = 2;
  return json.Write(options) + "\n";
}

}  // namespace kbitd::runtime
