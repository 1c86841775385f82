#include "runtime/checkpoint/bnb_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

constexpr char kQuantStateMarker[] = ".weight.quant_state.bitsandbytes__";
constexpr char kScbSuffix[] = ".SCB";
constexpr char kQweightSuffix[] = ".qweight";
constexpr const char* kGptqSuffixes[] = {".qweight", ".qzeros", ".scales", ".g_idx"};

// Whether `name` holds part of the state of module `prefix` stored as `format`.
bool HoldsStateOf(const std::string& name, const std::string& prefix, StoredQuantization format) {
  const std::string weight = prefix + ".weight";
  switch (format) {
    case StoredQuantization::kBnb4bit:
      return name == weight || absl::StartsWith(name, weight + ".");
    case StoredQuantization::kBnbInt8:
      return name == weight || name == prefix + ".SCB" || name == prefix + ".weight_format";
    case StoredQuantization::kGptq:
      for (const char* suffix : kGptqSuffixes) {
        if (name == prefix + suffix) return true;
      }
      return false;
  }
  return false;
}

}  // namespace

absl::StatusOr<QuantizedLayout> FindQuantizedModules(const Checkpoint& checkpoint) {
  const std::vector<std::string> names = checkpoint.TensorNames();
  std::map<std::string, StoredQuantization> prefixes;
  for (const std::string& name : names) {
    std::string prefix;
    StoredQuantization format = StoredQuantization::kBnb4bit;
    if (size_t at = name.find(kQuantStateMarker); at != std::string::npos) {
      prefix = name.substr(0, at);
    } else if (absl::EndsWith(name, kScbSuffix)) {
      prefix = name.substr(0, name.size() - std::strlen(kScbSuffix));
      format = StoredQuantization::kBnbInt8;
    } else if (absl::EndsWith(name, kQweightSuffix)) {
      prefix = name.substr(0, name.size() - std::strlen(kQweightSuffix));
      format = StoredQuantization::kGptq;
    } else {
      continue;
    }
    auto [it, inserted] = prefixes.emplace(prefix, format);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": module \"", prefix,
                                                     "\" has more than one quantization state"));
    }
  }
  QuantizedLayout layout;
  std::set<std::string> claimed;
  for (const auto& [prefix, format] : prefixes) {
    QuantizedModule module{prefix, format, {}};
    for (const std::string& name : names) {
      if (HoldsStateOf(name, prefix, format)) module.tensors.push_back(name);
    }
    // The tensor every format needs: the packed weight.
    const std::string weight =
        prefix + (format == StoredQuantization::kGptq ? kQweightSuffix : ".weight");
    if (std::find(module.tensors.begin(), module.tensors.end(), weight) == module.tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": quantized module \"",
                                                     prefix, "\" has no tensor \"", weight, "\""));
    }
    if (format == StoredQuantization::kGptq && checkpoint.Contains(prefix + ".weight")) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": module \"", prefix,
                                                     "\" has both GPTQ tensors (", prefix,
                                                     ".qweight) and a plain ", prefix, ".weight"));
    }
    claimed.insert(module.tensors.begin(), module.tensors.end());
    layout.modules.push_back(std::move(module));
  }
  for (const std::string& name : names) {
    if (!claimed.count(name)) layout.plain.push_back(name);
  }
  return layout;
}

std::string QuantStateMarker(const std::string& prefix, bool four_bit,
                             const std::string& quant_type) {
  return four_bit ? absl::StrCat(prefix, kQuantStateMarker, quant_type)
                  : absl::StrCat(prefix, kScbSuffix);
}

absl::StatusOr<quant::QuantState> ReadQuantState(const Checkpoint& checkpoint,
                                                 const QuantizedModule& module,
                                                 const quant::GptqParams* gptq) {
  const bool is_gptq = module.format == StoredQuantization::kGptq;
  if (is_gptq && gptq == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.dir(), ": module \"", module.prefix, "\" has GPTQ tensors (", module.prefix,
        ".qweight) but config.json has no quantization_config with quant_method \"gptq\""));
  }
  std::vector<quant::NamedTensor> tensors;
  for (const std::string& name : module.tensors) {
    KBITD_ASSIGN_OR_RETURN(TensorView view, checkpoint.Get(name));
    quant::NamedTensor tensor;
    tensor.name = name;
    tensor.dtype = view.dtype;
    tensor.shape.assign(view.shape.begin(), view.shape.end());
    tensor.bytes.assign(view.data.begin(), view.data.end());
    tensors.push_back(std::move(tensor));
  }
  auto state = is_gptq ? quant::GptqFromStateDict(tensors, module.prefix, *gptq)
                       : quant::FromStateDict(tensors, module.prefix);
  if (!state.ok()) {
    KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint.ShardOf(module.tensors[0]));
    return absl::Status(state.status().code(),
                        absl::StrCat(shard->path(), ": ", state.status().message()));
  }
  return state;
}

}  // namespace kbitd::runtime
