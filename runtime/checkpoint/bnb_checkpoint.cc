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

}  // namespace

absl::StatusOr<QuantizedLayout> FindQuantizedModules(const Checkpoint& checkpoint) {
  const std::vector<std::string> names = checkpoint.TensorNames();
  std::map<std::string, bool> prefixes;  // prefix -> four_bit
  for (const std::string& name : names) {
    std::string prefix;
    bool four_bit = true;
    if (size_t at = name.find(kQuantStateMarker); at != std::string::npos) {
      prefix = name.substr(0, at);
    } else if (absl::EndsWith(name, kScbSuffix)) {
      prefix = name.substr(0, name.size() - std::strlen(kScbSuffix));
      four_bit = false;
    } else {
      continue;
    }
    auto [it, inserted] = prefixes.emplace(prefix, four_bit);
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(checkpoint.dir(), ": module \"", prefix,
                       "\" has more than one bitsandbytes quantization state"));
    }
  }
  QuantizedLayout layout;
  std::set<std::string> claimed;
  for (const auto& [prefix, four_bit] : prefixes) {
    QuantizedModule module{prefix, four_bit, {}};
    const std::string weight = prefix + ".weight";
    for (const std::string& name : names) {
      bool mine = four_bit ? (name == weight || absl::StartsWith(name, weight + "."))
                           : (name == weight || name == prefix + ".SCB" ||
                              name == prefix + ".weight_format");
      if (mine) module.tensors.push_back(name);
    }
    if (std::find(module.tensors.begin(), module.tensors.end(), weight) == module.tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir(), ": quantized module \"",
                                                     prefix, "\" has no tensor \"", weight, "\""));
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
                                                 const QuantizedModule& module) {
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
  auto state = quant::FromStateDict(tensors, module.prefix);
  if (!state.ok()) {
    KBITD_ASSIGN_OR_RETURN(const SafetensorsFile* shard, checkpoint.ShardOf(module.tensors[0]));
    return absl::Status(state.status().code(),
                        absl::StrCat(shard->path(), ": ", state.status().message()));
  }
  return state;
}

}  // namespace kbitd::runtime
