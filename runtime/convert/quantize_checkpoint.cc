#include "runtime/convert/quantize_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/quant_state.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/quantization_config_json.h"

namespace kbitd::runtime {
namespace fs = std::filesystem;
namespace {

// Leaf names of the Linear modules transformers replaces in the supported decoder families.
const std::set<std::string, std::less<>>& LinearLeaves() {
  static const auto* leaves = new std::set<std::string, std::less<>>{"q_proj",
                                                                     "k_proj",
                                                                     "v_proj",
                                                                     "o_proj",
                                                                     "qkv_proj",
                                                                     "gate_proj",
                                                                     "up_proj",
                                                                     "down_proj",
                                                                     "gate_up_proj",
                                                                     "out_proj",
                                                                     "fc1",
                                                                     "fc2",
                                                                     "w1",
                                                                     "w2",
                                                                     "w3",
                                                                     "dense",
                                                                     "dense_h_to_4h",
                                                                     "dense_4h_to_h",
                                                                     "query_key_value",
                                                                     "lm_head"};
  return *leaves;
}

std::string ModuleOf(const std::string& weight_name) {
  return weight_name.substr(0, weight_name.size() - std::string_view(".weight").size());
}

bool IsQuantizableDtype(ScalarType type) {
  return type == ScalarType::kFloat32 || type == ScalarType::kFloat16 ||
         type == ScalarType::kBFloat16;
}

// One unit of output: a Linear to quantize, or a tensor to copy.
struct Item {
  std::string name;  // tensor name
  bool quantize = false;
};

absl::Status TensorError(const SafetensorsFile& shard, const std::string& tensor,
                         const std::string& message) {
  return absl::InvalidArgumentError(
      absl::StrCat(shard.path(), ": tensor \"", tensor, "\": ", message));
}

// Checks what bitsandbytes would store silently wrong: NaN/Inf weights (they poison a block's
// absmax) and, for LLM.int8 (which rounds to fp16 first), values beyond fp16's range.
absl::Status CheckValues(const SafetensorsFile& shard, const TensorView& view, bool int8) {
  const int64_t n = view.NumElements();
  for (int64_t i = 0; i < n; ++i) {
    float v = LoadAsFloat(view.data.data(), view.dtype, static_cast<size_t>(i));
    if (!std::isfinite(v)) {
      return TensorError(shard, std::string(view.name),
                         absl::StrCat("element ", i, " is ", std::isnan(v) ? "NaN" : "infinite",
                                      "; refusing to quantize non-finite weights"));
    }
    if (int8 && std::fabs(v) > 65504.0f) {
      return TensorError(shard, std::string(view.name),
                         absl::StrCat("element ", i, " = ", v,
                                      " overflows float16, which LLM.int8 quantizes from"));
    }
  }
  return absl::OkStatus();
}

// Validates a Linear weight against the requested format before anything is written.
absl::Status ValidateLinear(const Checkpoint& checkpoint, const std::string& name,
                            const QuantizationConfig& config) {
  KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint.ShardOf(name));
  const SafetensorsTensorInfo& info = **checkpoint.Info(name);
  if (!info.dtype || !IsQuantizableDtype(*info.dtype)) {
    return TensorError(*shard, name,
                       absl::StrCat("dtype ", info.dtype_name,
                                    " cannot be quantized (float32, float16 or bfloat16 only)"));
  }
  const int64_t n = info.NumElements();
  if (n == 0) return TensorError(*shard, name, "has no elements to quantize");
  if (config.load_in_4bit) {
    // bitsandbytes stores ((n + 1) // (2 * itemsize), 1) storage elements: a remainder would be
    // silently dropped, so refuse it.
    const int64_t itemsize = static_cast<int64_t>(ScalarTypeSize(config.bnb_4bit_quant_storage));
    if (quant::Packed4bitBytes(n) % itemsize != 0) {
      return TensorError(*shard, name,
                         absl::StrCat(n, " elements do not pack into whole ",
                                      std::string(TorchDtypeName(config.bnb_4bit_quant_storage)),
                                      " storage elements"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<quant::QuantState> QuantizeWeight(const TensorView& view,
                                                 const QuantizationConfig& config) {
  quant::QuantizeOptions options;
  if (config.load_in_8bit) {
    options.type = quant::QuantType::kInt8Rowwise;
  } else {
    KBITD_ASSIGN_OR_RETURN(quant::FourBitType type,
                           quant::FourBitTypeFromName(config.bnb_4bit_quant_type));
    options.type =
        type == quant::FourBitType::kNf4 ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
    options.blocksize = config.blocksize;
    options.double_quant = config.bnb_4bit_use_double_quant;
    options.quant_storage = config.bnb_4bit_quant_storage;
  }
  return quant::QuantizeToState(view.data.data(), view.dtype,
                                std::vector<int64_t>(view.shape.begin(), view.shape.end()),
                                options);
}

}  // namespace

bool IsQuantizableLinearWeight(std::string_view name, const SafetensorsTensorInfo& info) {
  constexpr std::string_view kSuffix = ".weight";
  if (info.shape.size() != 2 || name.size() <= kSuffix.size() ||
      name.substr(name.size() - kSuffix.size()) != kSuffix) {
    return false;
  }
  std::string_view module = name.substr(0, name.size() - kSuffix.size());
  size_t dot = module.rfind('.');
  std::string_view leaf = dot == std::string_view::npos ? module : module.substr(dot + 1);
  return LinearLeaves().count(leaf) > 0;
}

absl::StatusOr<ConvertSummary> QuantizeCheckpoint(const std::string& in_dir,
                                                  const std::string& out_dir,
                                                  const QuantizeCheckpointOptions& options) {
  const QuantizationConfig& config = options.config;
  KBITD_RETURN_IF_ERROR(ValidateQuantizationConfig(config));
  if (config.load_in_4bit == config.load_in_8bit) {
    return absl::InvalidArgumentError("choose exactly one of 4-bit (nf4/fp4) and int8");
  }
  if (config.load_in_4bit && config.bnb_4bit_quant_storage == ScalarType::kFloat64) {
    return absl::InvalidArgumentError("float64 quant storage is not supported");
  }
  if (config.load_in_4bit) KBITD_RETURN_IF_ERROR(quant::Validate4bitBlocksize(config.blocksize));
  KBITD_ASSIGN_OR_RETURN(auto staged, StagedFolder::Create(out_dir));
  KBITD_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(in_dir));
  KBITD_ASSIGN_OR_RETURN(JsonValue hf_config, ReadUnquantizedHfConfig(in_dir));

  // Plan and validate everything before writing a byte.
  const std::vector<std::string> skip =
      config.llm_int8_skip_modules.value_or(std::vector<std::string>{"lm_head"});
  std::vector<Item> items;
  for (const std::string& name : checkpoint->TensorNames()) {
    const SafetensorsTensorInfo& info = **checkpoint->Info(name);
    Item item{name,
              IsQuantizableLinearWeight(name, info) && !IsModuleSkipped(skip, ModuleOf(name))};
    if (item.quantize) {
      KBITD_RETURN_IF_ERROR(ValidateLinear(*checkpoint, name, config));
    } else if (!info.dtype) {
      return TensorError(**checkpoint->ShardOf(name), name,
                         absl::StrCat("dtype ", info.dtype_name, " is not supported"));
    }
    items.push_back(std::move(item));
  }

  KBITD_ASSIGN_OR_RETURN(auto writer,
                         ShardedCheckpointWriter::Create(staged->path(), options.output));
  ConvertSummary summary;
  ConvertProgress progress;
  progress.total = static_cast<int64_t>(items.size());
  const std::string format = config.load_in_8bit ? "int8" : config.bnb_4bit_quant_type;
  for (const Item& item : items) {
    KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint->ShardOf(item.name));
    const SafetensorsTensorInfo& info = **checkpoint->Info(item.name);
    KBITD_ASSIGN_OR_RETURN(TensorView view, shard->View(info));
    shard->WillNeed(info);
    summary.bytes_read += view.data.size();
    if (item.quantize) {
      // Quantizers read elements as float*/uint16_t*: copy unaligned tensors first.
      std::vector<uint8_t> aligned;
      if (!view.IsAligned()) {
        aligned.assign(view.data.begin(), view.data.end());
        view.data = aligned;
      }
      KBITD_RETURN_IF_ERROR(CheckValues(*shard, view, config.load_in_8bit));
      auto state = QuantizeWeight(view, config);
      if (!state.ok()) return TensorError(*shard, item.name, std::string(state.status().message()));
      auto tensors = quant::ToStateDict(*state, ModuleOf(item.name));
      if (!tensors.ok())
        return TensorError(*shard, item.name, std::string(tensors.status().message()));
      uint64_t group_bytes = 0;
      for (const auto& t : *tensors) group_bytes += t.bytes.size();
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(group_bytes));
      for (const auto& t : *tensors) {
        KBITD_RETURN_IF_ERROR(writer->Add(t.name, t.dtype, t.shape, t.bytes));
      }
      ++summary.converted;
    } else {
      KBITD_RETURN_IF_ERROR(writer->BeginGroup(view.data.size()));
      KBITD_RETURN_IF_ERROR(writer->Add(item.name, view.dtype,
                                        std::vector<int64_t>(view.shape.begin(), view.shape.end()),
                                        view.data));
      ++summary.copied;
    }
    checkpoint->DropPages(item.name);  // keep resident memory near one tensor
    KBITD_RETURN_IF_ERROR(ReportConvertedItem(options.progress, item.name,
                                              item.quantize ? format : "copy", summary.bytes_read,
                                              writer->total_bytes(), out_dir, &progress));
  }
  hf_config.Set("quantization_config", QuantizationConfigToJson(config));
  KBITD_RETURN_IF_ERROR(CompleteCheckpointFolder(*writer, *staged, in_dir, hf_config, &summary));
  return summary;
}

}  // namespace kbitd::runtime
