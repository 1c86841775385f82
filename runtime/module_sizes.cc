#include "runtime/module_sizes.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/double_quant.h"
#include "runtime/checkpoint/bnb_checkpoint.h"
#include "runtime/checkpoint/checkpoint.h"

namespace kbitd::runtime {
namespace {

struct SizingContext {
  const ModelConfig& config;
  const TensorTable& tensors;
  LinearQuantization q;
};

absl::StatusOr<const StoredTensor*> Find(const SizingContext& ctx, const std::string& name) {
  auto it = ctx.tensors.find(name);
  if (it == ctx.tensors.end()) {
    return absl::NotFoundError(absl::StrCat("tensor ", name, " is not in the checkpoint"));
  }
  return &it->second;
}

// The same wording as the loader's shape error, so either reports a bad checkpoint alike.
absl::StatusOr<const StoredTensor*> FindShaped(const SizingContext& ctx, const std::string& name,
                                               const std::vector<int64_t>& want) {
  KBITD_ASSIGN_OR_RETURN(const StoredTensor* tensor, Find(ctx, name));
  if (tensor->shape != want) {
    auto fmt = [](const std::vector<int64_t>& dims) {
      std::string s = "[";
      for (size_t i = 0; i < dims.size(); ++i) absl::StrAppend(&s, i ? ", " : "", dims[i]);
      return s + "]";
    };
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has shape ", fmt(tensor->shape), " but the config needs ", fmt(want)));
  }
  return tensor;
}

bool Has(const SizingContext& ctx, const std::string& name) {
  return ctx.tensors.find(name) != ctx.tensors.end();
}

// A pre-quantized module's state as the loader copies it (bnb-spec §5.2, §6.3; quant/gptq.h): the
// packed bytes trimmed to the element count, and the scales as stored; GPTQ's tensors as stored.
// nullopt: the module is not quantized in the checkpoint.
absl::StatusOr<std::optional<int64_t>> PrequantizedBytes(const SizingContext& ctx,
                                                         const std::string& prefix, int64_t out,
                                                         int64_t in) {
  if (Has(ctx, QuantStateMarker(prefix, true, "nf4")) ||
      Has(ctx, QuantStateMarker(prefix, true, "fp4"))) {
    KBITD_ASSIGN_OR_RETURN(const StoredTensor* absmax, Find(ctx, prefix + ".weight.absmax"));
    int64_t bytes = quant::Packed4bitBytes(out * in) + absmax->bytes;
    if (auto nested = ctx.tensors.find(prefix + ".weight.nested_absmax");
        nested != ctx.tensors.end()) {
      bytes += nested->second.bytes;
    }
    return bytes;
  }
  if (Has(ctx, QuantStateMarker(prefix, false, ""))) {
    KBITD_ASSIGN_OR_RETURN(const StoredTensor* cb, Find(ctx, prefix + ".weight"));
    KBITD_ASSIGN_OR_RETURN(const StoredTensor* scb, Find(ctx, QuantStateMarker(prefix, false, "")));
    return cb->bytes + scb->bytes;
  }
  if (Has(ctx, prefix + ".qweight")) {  // GPTQ: its four tensors, kept as stored
    int64_t bytes = 0;
    for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
      KBITD_ASSIGN_OR_RETURN(const StoredTensor* tensor, Find(ctx, prefix + suffix));
      bytes += tensor->bytes;
    }
    return bytes;
  }
  return std::nullopt;
}

// One linear (runtime/loader.cc LoadLinear): its weight in the form it will be stored, plus an fp32
// bias.
absl::StatusOr<int64_t> LinearBytes(const SizingContext& ctx, const std::string& prefix,
                                    int64_t out, int64_t in, bool has_bias) {
  const int64_t bias = has_bias ? out * static_cast<int64_t>(sizeof(float)) : 0;
  if (ctx.q.prequantized) {
    KBITD_ASSIGN_OR_RETURN(std::optional<int64_t> stored, PrequantizedBytes(ctx, prefix, out, in));
    // A linear the config says is quantized but the checkpoint holds plain is refused by the
    // loader with the full story; sized as plain here so that the loader gets to tell it.
    if (stored.has_value()) return *stored + bias;
  }
  if (ctx.q.quantize.has_value() && !IsModuleSkipped(ctx.q.skip_modules, prefix)) {
    const QuantizationConfig& q = *ctx.q.quantize;
    const int64_t weight = q.load_in_8bit
                               ? Int8RowwiseBytes(out, in)
                               : FourBitBytes(out * in, q.blocksize, q.bnb_4bit_use_double_quant);
    return weight + bias;
  }
  KBITD_ASSIGN_OR_RETURN(const StoredTensor* dense, FindShaped(ctx, prefix + ".weight", {out, in}));
  return dense->bytes + bias;
}

absl::StatusOr<int64_t> LayerBytes(const SizingContext& ctx, int64_t i) {
  const ModelConfig& c = ctx.config;
  const std::string a = absl::StrCat("model.layers.", i, ".self_attn");
  const std::string m = absl::StrCat("model.layers.", i, ".mlp");
  struct Linear {
    std::string prefix;
    int64_t out, in;
    bool bias;
  };
  const Linear linears[] = {
      {a + ".q_proj", c.q_size(), c.hidden_size, c.attention_bias},
      {a + ".k_proj", c.kv_size(), c.hidden_size, c.attention_bias},
      {a + ".v_proj", c.kv_size(), c.hidden_size, c.attention_bias},
      {a + ".o_proj", c.hidden_size, c.q_size(), c.o_proj_bias},
      {m + ".gate_proj", c.intermediate_size, c.hidden_size, c.mlp_bias},
      {m + ".up_proj", c.intermediate_size, c.hidden_size, c.mlp_bias},
      {m + ".down_proj", c.hidden_size, c.intermediate_size, c.mlp_bias},
  };
  // input_layernorm and post_attention_layernorm, converted to fp32 by the loader.
  int64_t bytes = 2 * c.hidden_size * static_cast<int64_t>(sizeof(float));
  for (const Linear& l : linears) {
    KBITD_ASSIGN_OR_RETURN(int64_t linear, LinearBytes(ctx, l.prefix, l.out, l.in, l.bias));
    bytes += linear;
  }
  return bytes;
}

}  // namespace

TensorTable TensorTableOf(const Checkpoint& checkpoint) {
  TensorTable table;
  for (const std::string& name : checkpoint.TensorNames()) {
    absl::StatusOr<const SafetensorsTensorInfo*> info = checkpoint.Info(name);
    if (!info.ok()) continue;  // TensorNames() lists only tensors Info() finds
    table[name] = StoredTensor{(*info)->shape, static_cast<int64_t>((*info)->size_bytes())};
  }
  return table;
}

int64_t ModuleSizes::total_bytes() const {
  int64_t total = 0;
  for (const ModuleSize& m : modules) total += m.bytes;
  return total;
}

int64_t ModuleSizes::largest_decoder_layer_bytes() const {
  int64_t largest = 0;
  for (const ModuleSize& m : modules) {
    if (m.decoder_layer) largest = std::max(largest, m.bytes);
  }
  return largest;
}

int ModuleSizes::leaf_modules() const {
  int leaves = 0;
  for (const ModuleSize& m : modules) leaves += m.leaf_modules;
  return leaves;
}

int64_t FourBitBytes(int64_t n, int64_t blocksize, bool double_quant) {
  const int64_t blocks = quant::NumBlocks(n, blocksize);
  const int64_t scales = double_quant ? Blockwise8bitBytes(blocks, quant::kNestedBlocksize)
                                      : blocks * static_cast<int64_t>(sizeof(float));
  return quant::Packed4bitBytes(n) + scales;
}

int64_t Blockwise8bitBytes(int64_t n, int64_t blocksize) {
  return n + quant::NumBlocks(n, blocksize) * static_cast<int64_t>(sizeof(float));
}

int64_t Int8RowwiseBytes(int64_t rows, int64_t cols) {
  return rows * cols + rows * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<LinearQuantization> ResolveLinearQuantization(
    const ModelConfig& config, const std::optional<QuantizationConfig>& requested) {
  LinearQuantization q;
  q.prequantized = config.quantization.has_value() && config.quantization->quantized();
  if (!q.prequantized && requested.has_value() && requested->quantized()) {
    KBITD_RETURN_IF_ERROR(ValidateQuantizationConfig(*requested));
    if (requested->gptq.has_value()) {
      return absl::UnimplementedError(
          "quantizing to GPTQ on load is not supported (GPTQ checkpoints load as they are)");
    }
    q.quantize = requested;
  }
  const QuantizationConfig* skip_from = q.quantize       ? &*q.quantize
                                        : q.prequantized ? &*config.quantization
                                                         : nullptr;
  q.skip_modules = skip_from != nullptr && skip_from->llm_int8_skip_modules.has_value()
                       ? *skip_from->llm_int8_skip_modules
                       : std::vector<std::string>{"lm_head"};
  // GPTQ quantizes the decoder layers' linears, and lm_head too where GPTQModel's lm_head says so.
  if (skip_from != nullptr && skip_from->gptq.has_value()) {
    q.skip_modules =
        skip_from->gptq->lm_head ? std::vector<std::string>{} : std::vector<std::string>{"lm_head"};
  }
  return q;
}

absl::StatusOr<ModuleSizes> ComputeModuleSizes(const ModelConfig& config,
                                               const TensorTable& tensors,
                                               const std::optional<QuantizationConfig>& quantize) {
  KBITD_ASSIGN_OR_RETURN(LinearQuantization q, ResolveLinearQuantization(config, quantize));
  SizingContext ctx{config, tensors, std::move(q)};

  ModuleSizes sizes;
  KBITD_ASSIGN_OR_RETURN(
      const StoredTensor* embed,
      FindShaped(ctx, "model.embed_tokens.weight", {config.vocab_size, config.hidden_size}));
  sizes.modules.push_back({"model.embed_tokens", embed->bytes});
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    KBITD_ASSIGN_OR_RETURN(int64_t bytes, LayerBytes(ctx, i));
    sizes.modules.push_back({absl::StrCat("model.layers.", i), bytes, /*decoder_layer=*/true,
                             /*leaf_modules=*/9});
  }
  sizes.modules.push_back({"model.norm", config.hidden_size * static_cast<int64_t>(sizeof(float))});
  if (config.tie_word_embeddings) {
    sizes.modules.push_back({"lm_head", 0, false, /*leaf_modules=*/0, "model.embed_tokens"});
  } else {
    KBITD_ASSIGN_OR_RETURN(int64_t head,
                           LinearBytes(ctx, "lm_head", config.vocab_size, config.hidden_size,
                                       /*has_bias=*/false));
    sizes.modules.push_back({"lm_head", head});
  }
  return sizes;
}

}  // namespace kbitd::runtime
