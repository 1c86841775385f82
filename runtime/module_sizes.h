// The placeable modules of a decoder model and the bytes each takes once loaded, worked out before
// loading from what the loader reads first: the checkpoint's tensor table (names, shapes, byte
// sizes), config.json and the quantization that will be applied. runtime/placement plans with
// them. The counts are exactly what runtime/loader allocates from the memory pool as
// MemoryCategory::kWeights for each module (tests/runtime/module_sizes_test.cc checks this against
// real loads), so a plan that fits is a load that fits.
//
// Units, as accelerate places a transformers LlamaForCausalLM with no_split_module_classes =
// ["LlamaDecoderLayer"]: "model.embed_tokens", "model.layers.N" (a decoder layer is never split),
// "model.norm", "lm_head". With tie_word_embeddings, lm_head reads the embedding: it has no bytes
// of its own and must sit on the embedding's device.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model_config.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {

class Checkpoint;  // runtime/checkpoint/checkpoint.h

// What a safetensors header says about one tensor.
struct StoredTensor {
  std::vector<int64_t> shape;
  int64_t bytes = 0;
};
using TensorTable = std::map<std::string, StoredTensor, std::less<>>;

// Every tensor of an open checkpoint (headers only; no tensor data is read).
TensorTable TensorTableOf(const Checkpoint& checkpoint);

struct ModuleSize {
  std::string name;  // "model.embed_tokens", "model.layers.3", "model.norm", "lm_head"
  int64_t bytes = 0;
  bool decoder_layer = false;
  // Leaf modules inside (a decoder layer: 7 linears + 2 norms; a tied lm_head: 0, as its weight is
  // the embedding's). accelerate's get_balanced_memory averages over leaves.
  int leaf_modules = 1;
  // Non-empty: the module whose weights this one shares (tie_word_embeddings); both must be placed
  // on one device.
  std::string tied_to;
};

struct ModuleSizes {
  std::vector<ModuleSize> modules;  // in forward order

  int64_t total_bytes() const;
  int64_t largest_decoder_layer_bytes() const;  // 0 without layers
  int leaf_modules() const;
};

// Resident bytes of one quantized tensor of n elements as kbitd stores it (model_weights.h):
// bitsandbytes 4-bit (NF4/FP4): n/2 packed bytes + one fp32 absmax per block, or with double quant
// one uint8 code per block + one fp32 nested absmax per 256 blocks (bnb-spec §2, §4). The nested
// 256-entry code and the offset live inside LinearWeight, not in the pool, so they are not counted.
int64_t FourBitBytes(int64_t n, int64_t blocksize, bool double_quant);
// 8-bit blockwise (bnb quantize_blockwise, bnb-spec §3.2): one uint8 code per element + one fp32
// absmax per block. kbitd uses it for double-quantized 4-bit scales (FourBitBytes).
int64_t Blockwise8bitBytes(int64_t n, int64_t blocksize);
// LLM.int8 (bnb-spec §6): int8 CB [rows, cols] + fp32 SCB [rows].
int64_t Int8RowwiseBytes(int64_t rows, int64_t cols);

// How the loader treats a model's linears: a checkpoint whose config.json declares bitsandbytes or
// GPTQ quantization is taken as stored (a requested quantization is ignored); otherwise the
// request, if any, quantizes every linear but the skipped ones. The skip list is the request's on
// quantize-on-load, the checkpoint's when pre-quantized, default ["lm_head"] (GPTQ: none when its
// config says lm_head is quantized too).
struct LinearQuantization {
  bool prequantized = false;
  std::optional<QuantizationConfig> quantize;  // quantize-on-load; nullopt = keep dense
  std::vector<std::string> skip_modules;
};
// INVALID_ARGUMENT (ValidateQuantizationConfig) for a bad quantize-on-load request, UNIMPLEMENTED
// for one that asks for GPTQ.
absl::StatusOr<LinearQuantization> ResolveLinearQuantization(
    const ModelConfig& config, const std::optional<QuantizationConfig>& requested);

// The modules of the model `config` describes, loaded from `tensors` with `quantize` as
// LoadOptions.quantization (ResolveLinearQuantization; dense weights keep their checkpoint dtype,
// norms and biases become fp32). NOT_FOUND naming a tensor the loader needs and the checkpoint
// lacks; INVALID_ARGUMENT for a shape that disagrees with the config or a bad quantization
// config.
absl::StatusOr<ModuleSizes> ComputeModuleSizes(const ModelConfig& config,
                                               const TensorTable& tensors,
                                               const std::optional<QuantizationConfig>& quantize);

}  // namespace kbitd::runtime
