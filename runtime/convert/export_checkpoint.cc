#include "runtime/convert/export_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "runtime/checkpoint/checkpoint.h"

namespace kbitd::runtime {
namespace fs = std::filesystem;
namespace {

// One tensor to write: a linear layer's weight (dequantized) or a resident dense tensor.
struct Item {
  std::string name;
  const LinearWeight* linear = nullptr;  // set: dequantize this module's weight
  Tensor tensor;                         // else: a resident dense tensor (its dtype and shape)
};

std::vector<Item> ExportItems(const Model& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  std::vector<Item> items;
  auto dense = [&](std::string name, const Tensor& tensor) {
    items.push_back({std::move(name), nullptr, tensor});
  };
  auto linear = [&](const LinearWeight& weight) {
    items.push_back({weight.name + ".weight", &weight, Tensor()});
    if (weight.bias.defined()) dense(weight.name + ".bias", weight.bias);
  };
  dense("model.embed_tokens.weight", w.embed_tokens);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& layer = w.layers[i];
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    // Norm weights are resident in float32 whatever the checkpoint held.
    dense(prefix + "input_layernorm.weight", layer.input_layernorm);
    dense(prefix + "post_attention_layernorm.weight", layer.post_attention_layernorm);
    for (const LinearWeight* weight : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
                                       &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      linear(*weight);
    }
  }
  dense("model.norm.weight", w.final_norm);
  // A tied head is a view of the embedding; save_pretrained leaves it out and so do we.
  if (!c.tie_word_embeddings) linear(w.lm_head);
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.name < b.name; });
  return items;
}

}  // namespace

ScalarType ExportDtype(const Model& model, std::optional<ScalarType> requested) {
  if (requested) return *requested;
  const ScalarType original = model.config().torch_dtype;
  return IsFloatingDtype(original) ? original : ScalarType::kBFloat16;
}

absl::StatusOr<ConvertSummary> ExportCheckpoint(const Model& model, const std::string& source_dir,
                                                const std::string& out_dir,
                                                const ExportCheckpointOptions& options) {
  if (options.dtype && !IsFloatingDtype(*options.dtype)) {
    return absl::InvalidArgumentError("the export dtype must be float32, float16 or bfloat16");
  }
  const ScalarType dtype = ExportDtype(model, options.dtype);
  KBITD_ASSIGN_OR_RETURN(JsonValue hf_config,
                         ReadJsonObjectFile((fs::path(source_dir) / "config.json").string()));
  KBITD_ASSIGN_OR_RETURN(auto staged, StagedFolder::Create(out_dir));
  KBITD_ASSIGN_OR_RETURN(auto writer,
                         ShardedCheckpointWriter::Create(staged->path(), options.output));
  const std::vector<Item> items = ExportItems(model);
  ConvertSummary summary;
  ConvertProgress progress;
  progress.total = static_cast<int64_t>(items.size());
  std::vector<uint8_t> buffer;
  std::vector<uint8_t> host;  // a resident tensor copied off its device
  for (const Item& item : items) {
    std::vector<int64_t> shape;
    if (item.linear != nullptr) {
      KBITD_RETURN_IF_ERROR(model.DequantizeLinear(item.linear->name, dtype, &buffer, &shape));
      summary.bytes_read += static_cast<uint64_t>(item.linear->resident_bytes());
      ++summary.converted;
    } else {
      if (!item.tensor.defined()) {
        return absl::InternalError(
            absl::StrCat("model ", model.name(), ": tensor \"", item.name, "\" is not resident"));
      }
      shape.assign(item.tensor.shape.begin(), item.tensor.shape.begin() + item.tensor.rank);
      KBITD_RETURN_IF_ERROR(model.CopyToHost(item.tensor, &host));
      CastElements(host.data(), item.tensor.dtype, static_cast<size_t>(item.tensor.numel()), dtype,
                   &buffer);
      summary.bytes_read += static_cast<uint64_t>(item.tensor.bytes());
      ++summary.copied;
    }
    KBITD_RETURN_IF_ERROR(writer->BeginGroup(buffer.size()));
    KBITD_RETURN_IF_ERROR(writer->Add(item.name, dtype, std::move(shape), buffer));
    KBITD_RETURN_IF_ERROR(
        ReportConvertedItem(options.progress, item.name, item.linear ? "dequantize" : "copy",
                            summary.bytes_read, writer->total_bytes(), out_dir, &progress));
  }
  KBITD_RETURN_IF_ERROR(CompleteCheckpointFolder(
      *writer, *staged, source_dir, PlainHfConfig(std::move(hf_config), dtype), &summary));
  return summary;
}

}  // namespace kbitd::runtime
