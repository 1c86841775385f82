#include "runtime/convert/quantize_gptq_checkpoint.h"

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/convert/quantize_checkpoint.h"

namespace kbitd::runtime {
namespace {

std::string ModuleOf(const std::string& weight_name) {
  return weight_name.substr(0, weight_name.size() - std::string_view(".weight").size());
}

// GPTQModel leaves lm_head in full precision unless asked (config "lm_head": false).
bool QuantizesModule(const std::string& name, const SafetensorsTensorInfo& info) {
  if (!IsQuantizableLinearWeight(name, info)) return false;
  const std::string module = ModuleOf(name);
  return module != "lm_head" && !module.ends_with(".lm_head");
}

// The quantization_config GPTQModel writes (transformers' GPTQConfig reads the same keys).
JsonValue GptqConfigJson(const quant::GptqQuantizeOptions& o, bool calibrated) {
  return JsonValue::MakeObject({
      {"quant_method", JsonValue::String("gptq")},
      {"bits", JsonValue::Integer(o.bits)},
      {"group_size", JsonValue::Integer(o.group_size)},
      {"desc_act", JsonValue::Bool(o.act_order && calibrated)},
      {"sym", JsonValue::Bool(o.sym)},
      {"checkpoint_format", JsonValue::String("gptq")},
      {"lm_head", JsonValue::Bool(false)},
      {"true_sequential", JsonValue::Bool(true)},
      {"damp_percent", JsonValue::Number(o.damp_percent)},
      {"static_groups", JsonValue::Bool(false)},
      {"pack_dtype", JsonValue::String("int32")},
      {"meta",
       JsonValue::MakeObject({{"quantizer", JsonValue::MakeArray({JsonValue::String(
                                                calibrated ? "kbitq gptq" : "kbitq rtn")})}})},
  });
}

absl::Status TensorError(const SafetensorsFile& shard, const std::string& tensor,
                         const std::string& message) {
  return absl::InvalidArgumentError(
      absl::StrCat(shard.path(), ": tensor \"", tensor, "\": ", message));
}

}  // namespace

absl::StatusOr<ConvertSummary> QuantizeGptqCheckpoint(
    const std::string& in_dir, const std::string& out_dir,
    const QuantizeGptqCheckpointOptions& options) {
  const quant::GptqQuantizeOptions& quant = options.quant;
  KBITD_RETURN_IF_ERROR(quant::ValidateGptqBits(quant.bits));
  KBITD_RETURN_IF_ERROR(quant::ValidateGptqGroupSize(quant.group_size));
  KBITD_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(in_dir));
  KBITD_ASSIGN_OR_RETURN(JsonValue hf_config, ReadUnquantizedHfConfig(in_dir));
  // Validate every linear before writing a byte.
  for (const std::string& name : checkpoint->TensorNames()) {
    const SafetensorsTensorInfo& info = **checkpoint->Info(name);
    KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint->ShardOf(name));
    if (!info.dtype) {
      return TensorError(*shard, name,
                         absl::StrCat("dtype ", info.dtype_name, " is not supported"));
    }
    if (!QuantizesModule(name, info)) continue;
    if (*info.dtype != ScalarType::kFloat32 && *info.dtype != ScalarType::kFloat16 &&
        *info.dtype != ScalarType::kBFloat16) {
      return TensorError(*shard, name, "GPTQ quantizes float32, float16 or bfloat16 weights");
    }
    absl::Status ok = quant::ValidateGptqQuantize(info.shape[0], info.shape[1], quant);
    if (!ok.ok()) return TensorError(*shard, name, std::string(ok.message()));
  }
  KBITD_ASSIGN_OR_RETURN(auto staged, StagedFolder::Create(out_dir));
  KBITD_ASSIGN_OR_RETURN(auto writer,
                         ShardedCheckpointWriter::Create(staged->path(), options.output));
  ConvertSummary summary;
  ConvertProgress progress;
  const std::vector<std::string> names = checkpoint->TensorNames();
  progress.total = static_cast<int64_t>(names.size());
  bool calibrated = false;
  for (const std::string& name : names) {
    KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint->ShardOf(name));
    const SafetensorsTensorInfo& info = **checkpoint->Info(name);
    KBITD_ASSIGN_OR_RETURN(TensorView view, shard->View(info));
    summary.bytes_read += view.data.size();
    std::string action = "copy";
    if (QuantizesModule(name, info)) {
      const int64_t out = info.shape[0], in = info.shape[1];
      std::vector<float> weight(out * in);
      for (size_t i = 0; i < weight.size(); ++i) {
        weight[i] = LoadAsFloat(view.data.data(), view.dtype, i);
      }
      const std::string module = ModuleOf(name);
      const std::vector<double>* hessian = nullptr;
      if (options.hessians != nullptr) {
        auto it = options.hessians->find(module);
        if (it != options.hessians->end()) hessian = &it->second;
      }
      auto q = hessian != nullptr ? quant::QuantizeGptq(weight.data(), out, in, *hessian, quant)
                                  : quant::QuantizeGptqRtn(weight.data(), out, in, quant);
      if (!q.ok()) return TensorError(*shard, name, std::string(q.status().message()));
      calibrated |= hessian != nullptr;
      const auto tensors = quant::GptqStateDict(*q, module, quant::GptqZeroFormat::kV1);
      uint64_t group_bytes = 0;
      for (const auto& t : tensors) group_bytes += t.bytes.size();
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(group_bytes));
      for (const auto& t : tensors) {
        KBITD_RETURN_IF_ERROR(writer->Add(t.name, t.dtype, t.shape, t.bytes));
      }
      ++summary.converted;
      action = hessian != nullptr ? "gptq" : "rtn";
    } else {
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(view.data.size()));
      KBITD_RETURN_IF_ERROR(writer->Add(
          name, view.dtype, std::vector<int64_t>(view.shape.begin(), view.shape.end()), view.data));
      ++summary.copied;
    }
    checkpoint->DropPages(name);  // keep resident memory near one tensor
    KBITD_RETURN_IF_ERROR(ReportConvertedItem(options.progress, name, action, summary.bytes_read,
                                              writer->total_bytes(), out_dir, &progress));
  }
  hf_config.Set("quantization_config", GptqConfigJson(quant, calibrated));
  KBITD_RETURN_IF_ERROR(CompleteCheckpointFolder(*writer, *staged, in_dir, hf_config, &summary));
  return summary;
}

}  // namespace kbitd::runtime
