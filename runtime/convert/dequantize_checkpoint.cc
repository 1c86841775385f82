#include "runtime/convert/dequantize_checkpoint.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "quant/quant_state.h"
#include "runtime/checkpoint/bnb_checkpoint.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/quantization_config.h"
#include "runtime/quantization_config_json.h"

namespace kbitd::runtime {
namespace fs = std::filesystem;

absl::StatusOr<ConvertSummary> DequantizeCheckpoint(const std::string& in_dir,
                                                    const std::string& out_dir,
                                                    const DequantizeCheckpointOptions& options) {
  if (options.dtype && !IsFloatingDtype(*options.dtype)) {
    return absl::InvalidArgumentError("the output dtype must be float32, float16 or bfloat16");
  }
  KBITD_ASSIGN_OR_RETURN(auto staged, StagedFolder::Create(out_dir));
  KBITD_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(in_dir));
  KBITD_ASSIGN_OR_RETURN(JsonValue hf_config,
                         ReadJsonObjectFile((fs::path(in_dir) / "config.json").string()));
  KBITD_ASSIGN_OR_RETURN(QuantizedLayout layout, FindQuantizedModules(*checkpoint));
  if (layout.modules.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(in_dir, ": no quantized tensors found (bitsandbytes or GPTQ)"));
  }
  absl::StatusOr<std::optional<quant::GptqParams>> gptq = GptqParamsOfHfConfig(hf_config);
  if (!gptq.ok()) {
    return absl::Status(gptq.status().code(),
                        absl::StrCat(in_dir, "/config.json: ", gptq.status().message()));
  }
  for (const std::string& name : layout.plain) {
    const SafetensorsTensorInfo& info = **checkpoint->Info(name);
    if (!info.dtype) {
      return absl::InvalidArgumentError(absl::StrCat((*checkpoint->ShardOf(name))->path(),
                                                     ": tensor \"", name, "\": dtype ",
                                                     info.dtype_name, " is not supported"));
    }
  }

  // One ordered list of work: modules by their weight name, plain tensors by name.
  struct Item {
    std::string name;
    const QuantizedModule* module = nullptr;
  };
  std::vector<Item> items;
  for (const QuantizedModule& m : layout.modules) items.push_back({m.prefix + ".weight", &m});
  for (const std::string& name : layout.plain) items.push_back({name, nullptr});
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.name < b.name; });

  KBITD_ASSIGN_OR_RETURN(auto writer,
                         ShardedCheckpointWriter::Create(staged->path(), options.output));
  ConvertSummary summary;
  ConvertProgress progress;
  progress.total = static_cast<int64_t>(items.size());
  std::vector<uint8_t> buffer;
  for (const Item& item : items) {
    if (item.module != nullptr) {
      KBITD_ASSIGN_OR_RETURN(
          quant::QuantState state,
          ReadQuantState(*checkpoint, *item.module, gptq->has_value() ? &**gptq : nullptr));
      for (const std::string& name : item.module->tensors) {
        summary.bytes_read += (**checkpoint->Info(name)).size_bytes();
      }
      const ScalarType dtype = options.dtype.value_or(state.dtype);
      buffer.resize(static_cast<size_t>(state.numel()) * ScalarTypeSize(dtype));
      absl::Status status = quant::DequantizeState(state, dtype, buffer.data());
      if (!status.ok()) {
        return absl::Status(status.code(), absl::StrCat(in_dir, ": module \"", item.module->prefix,
                                                        "\": ", status.message()));
      }
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(buffer.size()));
      KBITD_RETURN_IF_ERROR(writer->Add(item.name, dtype, state.shape, buffer));
      for (const std::string& name : item.module->tensors) checkpoint->DropPages(name);
      ++summary.converted;
    } else {
      KBITD_ASSIGN_OR_RETURN(TensorView view, checkpoint->Get(item.name));
      summary.bytes_read += view.data.size();
      std::vector<int64_t> shape(view.shape.begin(), view.shape.end());
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(view.data.size()));
      if (options.dtype && IsFloatingDtype(view.dtype) && view.dtype != *options.dtype) {
        std::vector<uint8_t> source(view.data.begin(), view.data.end());  // aligned copy
        CastElements(source.data(), view.dtype, static_cast<size_t>(view.NumElements()),
                     *options.dtype, &buffer);
        KBITD_RETURN_IF_ERROR(writer->Add(item.name, *options.dtype, shape, buffer));
      } else {
        KBITD_RETURN_IF_ERROR(writer->Add(item.name, view.dtype, shape, view.data));
      }
      checkpoint->DropPages(item.name);
      ++summary.copied;
    }
    KBITD_RETURN_IF_ERROR(
        ReportConvertedItem(options.progress, item.name, item.module ? "dequantize" : "copy",
                            summary.bytes_read, writer->total_bytes(), out_dir, &progress));
  }
  KBITD_RETURN_IF_ERROR(CompleteCheckpointFolder(
      *writer, *staged, in_dir, PlainHfConfig(std::move(hf_config), options.dtype), &summary));
  return summary;
}

}  // namespace kbitd::runtime
