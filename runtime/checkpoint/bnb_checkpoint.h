// Finds the quantized modules of a checkpoint saved by transformers + bitsandbytes (or kbitq) from
// bitsandbytes' state-dict key names (bnb-spec §5.2, §6.3), or of a GPTQ checkpoint, and reads
// their quant::QuantState:
//   4-bit:     "<p>.weight.quant_state.bitsandbytes__nf4|fp4" marks module <p>; its state is every
//              "<p>.weight" / "<p>.weight.*" tensor;
//   LLM.int8:  "<p>.SCB" marks module <p>; its state is <p>.weight, <p>.SCB, <p>.weight_format;
//   GPTQ:      "<p>.qweight" marks module <p>; its state is <p>.qweight, .qzeros, .scales, .g_idx
//              (quant/gptq.h), read with the config's bits, group size and zero format.
// Biases and all other tensors are plain.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/quant_state.h"
#include "runtime/checkpoint/checkpoint.h"

namespace kbitd::runtime {

enum class StoredQuantization : uint8_t { kBnb4bit, kBnbInt8, kGptq };

struct QuantizedModule {
  std::string prefix;  // e.g. "model.layers.0.self_attn.q_proj"
  StoredQuantization format = StoredQuantization::kBnb4bit;
  std::vector<std::string> tensors;  // the checkpoint tensors holding its state, sorted
};

struct QuantizedLayout {
  std::vector<QuantizedModule> modules;  // sorted by prefix
  std::vector<std::string> plain;        // every other tensor, sorted
};

absl::StatusOr<QuantizedLayout> FindQuantizedModules(const Checkpoint& checkpoint);

// The tensor that would mark `prefix` as a quantized module: "<prefix>.weight.quant_state.
// bitsandbytes__<quant_type>" (4-bit, quant_type "nf4" or "fp4") or "<prefix>.SCB" (LLM.int8),
// for errors about a module that lacks its state.
std::string QuantStateMarker(const std::string& prefix, bool four_bit,
                             const std::string& quant_type);

// Copies the module's tensors out of the checkpoint and parses them with quant::FromStateDict
// (bitsandbytes) or quant::GptqFromStateDict with `gptq` (the config's; a GPTQ module without it
// is INVALID_ARGUMENT); errors name the checkpoint and the tensor at fault.
absl::StatusOr<quant::QuantState> ReadQuantState(const Checkpoint& checkpoint,
                                                 const QuantizedModule& module,
                                                 const quant::GptqParams* gptq = nullptr);

}  // namespace kbitd::runtime
