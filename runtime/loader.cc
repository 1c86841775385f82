#include "runtime/loader.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/double_quant.h"
#include "quant/int8_rowwise.h"
#include "runtime/checkpoint/bnb_checkpoint.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/module_sizes.h"
#include "runtime/tokenizer/tokenizer.h"

namespace kbitd::runtime {
namespace {

// Loading state shared by the per-tensor steps.
struct LoadContext {
  const LoadOptions& options;
  const ModelConfig& config;
  const Checkpoint& checkpoint;
  const PlacementPlan& plan;
  MemoryPool* pool = nullptr;  // the pool of the module being loaded (UseDeviceOf)
  Backend* backend = nullptr;  // that device's backend: copies host bytes to a device
  // Quantization to apply to plain linears (quantize-on-load), nullopt = keep dense.
  std::optional<QuantizationConfig> quantize;
  bool prequantized = false;
  // Modules stored quantized (bitsandbytes or GPTQ keys), by module name; empty for a plain
  // checkpoint.
  std::map<std::string, QuantizedModule> quantized_modules;
  // How the GPTQ tensors read (config.json's quantization_config); nullopt unless GPTQ.
  std::optional<quant::GptqParams> gptq;
  std::vector<std::string> skip_modules;
  LoadProgress progress;
  int64_t parameter_count = 0;

  void Consumed(const std::string& name) {
    absl::StatusOr<const SafetensorsTensorInfo*> info = checkpoint.Info(name);
    absl::StatusOr<const SafetensorsFile*> shard = checkpoint.ShardOf(name);
    if (info.ok() && shard.ok()) {
      (*shard)->DropPages(**info);  // streamed: hand the pages back once consumed
      progress.bytes_done += (*info)->size_bytes();
    }
    ++progress.tensors_done;
    if (options.progress) options.progress(progress);
  }
};

absl::Status ShapeError(const std::string& tensor, const std::vector<int64_t>& want,
                        std::span<const int64_t> got) {
  auto fmt = [](auto&& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) absl::StrAppend(&s, i ? ", " : "", dims[i]);
    return s + "]";
  };
  return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor, " has shape ", fmt(got),
                                                 " but the config needs ", fmt(want)));
}

absl::StatusOr<TensorView> GetChecked(LoadContext& ctx, const std::string& name,
                                      const std::vector<int64_t>& shape) {
  KBITD_ASSIGN_OR_RETURN(TensorView view, ctx.checkpoint.Get(name));
  if (!std::equal(view.shape.begin(), view.shape.end(), shape.begin(), shape.end())) {
    return ShapeError(name, shape, view.shape);
  }
  return view;
}

absl::StatusOr<TensorView> GetFloat(LoadContext& ctx, const std::string& name,
                                    const std::vector<int64_t>& shape) {
  KBITD_ASSIGN_OR_RETURN(TensorView view, GetChecked(ctx, name, shape));
  if (view.dtype != ScalarType::kFloat32 && view.dtype != ScalarType::kFloat16 &&
      view.dtype != ScalarType::kBFloat16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has dtype ",
                                                   std::string(SafetensorsDtypeName(view.dtype)),
                                                   ", expected F32, F16 or BF16"));
  }
  return view;
}

// Loads what follows into the pool of the device the plan gives `module`.
absl::Status UseDeviceOf(LoadContext& ctx, const std::string& module) {
  KBITD_ASSIGN_OR_RETURN(std::shared_ptr<MemoryPool> pool,
                         ctx.options.devices->Pool(ctx.plan.DeviceFor(module)));
  ctx.pool = pool.get();  // the DeviceSet owns it for longer than the load
  KBITD_ASSIGN_OR_RETURN(ctx.backend, ctx.options.devices->BackendFor(pool->device()));
  return absl::OkStatus();
}

absl::StatusOr<Buffer> Allocate(LoadContext& ctx, size_t bytes) {
  return ctx.pool->Allocate(bytes, MemoryCategory::kWeights, ctx.options.name);
}

// A weights buffer on the module's device holding `bytes` host bytes. Weights are prepared on
// the host (converted, quantized, or read from the mapped checkpoint) and copied once; a device
// buffer is complete when this returns, so the host bytes may go right after.
absl::StatusOr<Buffer> Place(LoadContext& ctx, const void* host, size_t bytes) {
  KBITD_ASSIGN_OR_RETURN(Buffer buffer, Allocate(ctx, bytes));
  if (bytes == 0) return buffer;
  if (buffer.device().is_cpu()) {
    std::memcpy(buffer.data(), host, bytes);
    return buffer;
  }
  const int64_t n = static_cast<int64_t>(bytes);
  KBITD_RETURN_IF_ERROR(ctx.backend->CopyTo(Tensor::Host(host, ScalarType::kUInt8, {n}),
                                            buffer.View(ScalarType::kUInt8, {n})));
  KBITD_RETURN_IF_ERROR(ctx.backend->Synchronize());
  return buffer;
}

// Copies raw bytes of a view into a weights buffer.
absl::StatusOr<Buffer> CopyBytes(LoadContext& ctx, const TensorView& view) {
  return Place(ctx, view.data.data(), view.data.size());
}

// A float vector tensor (norm weight, bias) converted to float32.
absl::StatusOr<Tensor> LoadFloatVector(LoadContext& ctx, const std::string& name, int64_t n,
                                       std::vector<Buffer>* storage) {
  KBITD_ASSIGN_OR_RETURN(TensorView view, GetFloat(ctx, name, {n}));
  std::vector<float> values(n);
  for (int64_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, view.data.data() + i * 4, view.dtype == ScalarType::kFloat32 ? 4 : 0);
    if (view.dtype != ScalarType::kFloat32) {
      uint16_t bits;
      std::memcpy(&bits, view.data.data() + i * 2, 2);
      v = view.dtype == ScalarType::kFloat16 ? HalfToFloat(bits) : BFloat16ToFloat(bits);
    }
    values[i] = v;
  }
  KBITD_ASSIGN_OR_RETURN(Buffer buffer, Place(ctx, values.data(), n * sizeof(float)));
  ctx.parameter_count += n;
  Tensor tensor = buffer.View(ScalarType::kFloat32, {n});
  storage->push_back(std::move(buffer));
  ctx.Consumed(name);
  return tensor;
}

// Float tensor bytes with natural alignment (mmap'd views may be unaligned in foreign files).
const void* AlignedFloatData(const TensorView& view, std::vector<uint8_t>* copy) {
  if (view.IsAligned()) return view.data.data();
  copy->assign(view.data.begin(), view.data.end());
  return copy->data();
}

template <typename T>
absl::StatusOr<Buffer> CopyVector(LoadContext& ctx, const std::vector<T>& values) {
  return Place(ctx, values.data(), values.size() * sizeof(T));
}

// A 4-bit weight's block scales in the weights pool: plain fp32 absmax, or (double quant) the
// 8-bit codes with their nested absmax, code and offset.
absl::Status PlaceFourBitScales(LoadContext& ctx, const std::vector<float>& absmax,
                                const std::optional<quant::NestedAbsmax>& nested, LinearWeight* w) {
  if (!nested.has_value()) {
    KBITD_ASSIGN_OR_RETURN(Buffer absmax_buffer, CopyVector(ctx, absmax));
    w->absmax = absmax_buffer.View(ScalarType::kFloat32, {static_cast<int64_t>(absmax.size())});
    w->storage.push_back(std::move(absmax_buffer));
    return absl::OkStatus();
  }
  KBITD_ASSIGN_OR_RETURN(Buffer codes, CopyVector(ctx, nested->codes));
  KBITD_ASSIGN_OR_RETURN(Buffer nested_absmax, CopyVector(ctx, nested->nested_absmax));
  w->absmax_codes = codes.View(ScalarType::kUInt8, {static_cast<int64_t>(nested->codes.size())});
  w->nested_absmax = nested_absmax.View(ScalarType::kFloat32,
                                        {static_cast<int64_t>(nested->nested_absmax.size())});
  std::copy_n(nested->nested_code.begin(), w->nested_code.size(), w->nested_code.begin());
  w->nested_offset = nested->offset;
  w->nested_blocksize = nested->nested_blocksize;
  w->storage.push_back(std::move(codes));
  w->storage.push_back(std::move(nested_absmax));
  return absl::OkStatus();
}

// Quantize-on-load on the module's device (Backend::Quantize4bit and friends, byte-identical to
// quant/'s CPU reference everywhere): on the host straight from the mapped checkpoint; on a GPU
// from one staging copy of the dense tensor, so the device never holds more than one unquantized
// tensor and only the quantized bytes stay.
absl::Status QuantizeLinear(LoadContext& ctx, const TensorView& view, LinearWeight* w) {
  const QuantizationConfig& q = *ctx.quantize;
  const int64_t out = w->out_features, in = w->in_features, n = out * in;
  Backend& backend = *ctx.backend;
  std::vector<uint8_t> aligned;
  Buffer staging;
  Tensor dense;
  if (ctx.pool->device().is_cpu()) {
    dense = Tensor::Host(AlignedFloatData(view, &aligned), view.dtype, {out, in});
  } else {
    KBITD_ASSIGN_OR_RETURN(staging, ctx.pool->Allocate(view.data.size(), MemoryCategory::kWorkspace,
                                                       ctx.options.name));
    dense = staging.View(view.dtype, {out, in});
    KBITD_RETURN_IF_ERROR(
        backend.CopyTo(Tensor::Host(view.data.data(), view.dtype, {out, in}), dense));
  }
  auto allocate = [&](ScalarType dtype, std::initializer_list<int64_t> dims,
                      MemoryCategory category) -> absl::StatusOr<Buffer> {
    int64_t count = 1;
    for (int64_t d : dims) count *= d;
    return ctx.pool->Allocate(count * ScalarTypeSize(dtype), category, ctx.options.name);
  };
  if (q.load_in_8bit) {
    KBITD_ASSIGN_OR_RETURN(Buffer cb,
                           allocate(ScalarType::kInt8, {out, in}, MemoryCategory::kWeights));
    KBITD_ASSIGN_OR_RETURN(Buffer scb,
                           allocate(ScalarType::kFloat32, {out}, MemoryCategory::kWeights));
    w->cb = cb.View(ScalarType::kInt8, {out, in});
    w->scb = scb.View(ScalarType::kFloat32, {out});
    KBITD_RETURN_IF_ERROR(backend.QuantizeRowwiseInt8(dense, w->cb, w->scb));
    KBITD_RETURN_IF_ERROR(backend.Synchronize());  // before the staging copy goes
    w->quant_type = quant::QuantType::kInt8Rowwise;
    w->threshold = q.llm_int8_threshold;
    w->storage.push_back(std::move(cb));
    w->storage.push_back(std::move(scb));
    return absl::OkStatus();
  }
  KBITD_ASSIGN_OR_RETURN(quant::FourBitType type,
                         quant::FourBitTypeFromName(q.bnb_4bit_quant_type));
  const int64_t blocks = quant::NumBlocks(n, q.blocksize);
  const int64_t packed_bytes = quant::Packed4bitBytes(n);
  const bool nested = q.bnb_4bit_use_double_quant;
  KBITD_ASSIGN_OR_RETURN(Buffer packed,
                         allocate(ScalarType::kUInt8, {packed_bytes}, MemoryCategory::kWeights));
  // Double quant keeps only the 8-bit codes of the absmax: the fp32 absmax is scratch then.
  KBITD_ASSIGN_OR_RETURN(Buffer absmax,
                         allocate(ScalarType::kFloat32, {blocks},
                                  nested ? MemoryCategory::kWorkspace : MemoryCategory::kWeights));
  w->packed = packed.View(ScalarType::kUInt8, {packed_bytes});
  const Tensor absmax_view = absmax.View(ScalarType::kFloat32, {blocks});
  KBITD_RETURN_IF_ERROR(backend.Quantize4bit(type, dense, q.blocksize, w->packed, absmax_view));
  if (nested) {
    const int64_t groups = quant::NumBlocks(blocks, quant::kNestedBlocksize);
    KBITD_ASSIGN_OR_RETURN(Buffer codes,
                           allocate(ScalarType::kUInt8, {blocks}, MemoryCategory::kWeights));
    KBITD_ASSIGN_OR_RETURN(Buffer nested_absmax,
                           allocate(ScalarType::kFloat32, {groups}, MemoryCategory::kWeights));
    KBITD_ASSIGN_OR_RETURN(Buffer offset,
                           allocate(ScalarType::kFloat32, {1}, MemoryCategory::kWorkspace));
    w->absmax_codes = codes.View(ScalarType::kUInt8, {blocks});
    w->nested_absmax = nested_absmax.View(ScalarType::kFloat32, {groups});
    KBITD_RETURN_IF_ERROR(backend.DoubleQuantize(absmax_view, w->absmax_codes, w->nested_absmax,
                                                 offset.View(ScalarType::kFloat32, {1})));
    KBITD_RETURN_IF_ERROR(
        backend.CopyTo(offset.View(ScalarType::kFloat32, {1}),
                       Tensor::Host(&w->nested_offset, ScalarType::kFloat32, {1})));
    const auto& map = quant::DynamicMap();
    std::copy(map.begin(), map.end(), w->nested_code.begin());
    w->nested_blocksize = quant::kNestedBlocksize;
    w->storage.push_back(std::move(codes));
    w->storage.push_back(std::move(nested_absmax));
  } else {
    w->absmax = absmax_view;
  }
  KBITD_RETURN_IF_ERROR(backend.Synchronize());  // the offset is on the host; staging may go
  if (!nested) w->storage.push_back(std::move(absmax));
  const bool nf4 = type == quant::FourBitType::kNf4;
  w->quant_type = nf4 ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
  const auto& code = nf4 ? quant::Nf4Code() : quant::Fp4Code();
  std::copy(code.begin(), code.end(), w->code.begin());
  w->blocksize = q.blocksize;
  w->storage.push_back(std::move(packed));
  return absl::OkStatus();
}

// A GPTQ module's tensors placed as stored (quant/gptq.h): the CPU backend dequantizes them a
// chunk of rows at a time, so the resident bytes are the checkpoint's.
absl::Status PlaceGptq(LoadContext& ctx, const quant::GptqTensors& t, LinearWeight* w) {
  const int64_t in = w->in_features, out = w->out_features, groups = t.groups;
  const int bits = t.params.bits;
  KBITD_ASSIGN_OR_RETURN(Buffer qweight, CopyVector(ctx, t.qweight));
  KBITD_ASSIGN_OR_RETURN(Buffer qzeros, CopyVector(ctx, t.qzeros));
  KBITD_ASSIGN_OR_RETURN(Buffer scales, CopyVector(ctx, t.scales));
  KBITD_ASSIGN_OR_RETURN(Buffer g_idx, CopyVector(ctx, t.g_idx));
  w->quant_type = quant::QuantType::kGptq;
  w->gptq = t.params;
  w->qweight = qweight.View(ScalarType::kInt32, {quant::GptqWords(in, bits), out});
  w->qzeros = qzeros.View(ScalarType::kInt32, {groups, quant::GptqWords(out, bits)});
  w->scales = scales.View(ScalarType::kFloat16, {groups, out});
  w->g_idx = g_idx.View(ScalarType::kInt32, {in});
  for (Buffer* b : {&qweight, &qzeros, &scales, &g_idx}) w->storage.push_back(std::move(*b));
  return absl::OkStatus();
}

// A Linear4bit / Linear8bitLt module saved by transformers + bitsandbytes or kbitq (bnb-spec §5.2,
// §6.3), or a GPTQ module. Its state is read and validated by quant::FromStateDict /
// GptqFromStateDict through runtime/checkpoint/bnb_checkpoint.h, the parser `kbitq
// inspect/dequantize` use, then copied into the weights pool.
absl::Status LoadPrequantized(LoadContext& ctx, const QuantizedModule& module, LinearWeight* w) {
  KBITD_ASSIGN_OR_RETURN(quant::QuantState state,
                         ReadQuantState(ctx.checkpoint, module, ctx.gptq ? &*ctx.gptq : nullptr));
  const std::vector<int64_t> want = {w->out_features, w->in_features};
  if (state.shape != want) {
    if (state.type == quant::QuantType::kGptq) {
      return absl::InvalidArgumentError(
          absl::StrCat("GPTQ module ", module.prefix, " holds a [", state.shape[0], ", ",
                       state.shape[1], "] weight (", module.prefix, ".qweight, ", module.prefix,
                       ".g_idx) but the config needs [", want[0], ", ", want[1], "]"));
    }
    return ShapeError(module.prefix + ".weight", want, state.shape);
  }
  w->original_dtype = state.dtype;
  switch (state.type) {
    case quant::QuantType::kNf4:
    case quant::QuantType::kFp4: {
      KBITD_ASSIGN_OR_RETURN(Buffer data, CopyVector(ctx, state.data));
      w->quant_type = state.type;
      std::copy_n(state.code.begin(), w->code.size(), w->code.begin());
      w->blocksize = state.blocksize;
      w->packed = data.View(ScalarType::kUInt8, {static_cast<int64_t>(state.data.size())});
      w->storage.push_back(std::move(data));
      KBITD_RETURN_IF_ERROR(PlaceFourBitScales(ctx, state.absmax, state.nested, w));
      break;
    }
    case quant::QuantType::kInt8Rowwise: {
      KBITD_ASSIGN_OR_RETURN(Buffer data, CopyVector(ctx, state.data));
      KBITD_ASSIGN_OR_RETURN(Buffer scb, CopyVector(ctx, state.scb));
      w->quant_type = quant::QuantType::kInt8Rowwise;
      w->cb = data.View(ScalarType::kInt8, {w->out_features, w->in_features});
      w->scb = scb.View(ScalarType::kFloat32, {w->out_features});
      w->threshold = ctx.config.quantization ? ctx.config.quantization->llm_int8_threshold : 6.0f;
      w->storage.push_back(std::move(data));
      w->storage.push_back(std::move(scb));
      break;
    }
    case quant::QuantType::kGptq:
      KBITD_RETURN_IF_ERROR(PlaceGptq(ctx, *state.gptq, w));
      break;
    case quant::QuantType::kInt8Blockwise:
      return absl::UnimplementedError(absl::StrCat(
          "module ", module.prefix, ": 8-bit blockwise linear weights are not served"));
  }
  for (const std::string& name : module.tensors) ctx.Consumed(name);
  return absl::OkStatus();
}

absl::Status LoadLinear(LoadContext& ctx, const std::string& prefix, int64_t out, int64_t in,
                        bool has_bias, LinearWeight* w) {
  w->name = prefix;
  w->out_features = out;
  w->in_features = in;
  w->original_dtype = ctx.config.torch_dtype;
  ctx.parameter_count += out * in;
  if (auto it = ctx.quantized_modules.find(prefix); it != ctx.quantized_modules.end()) {
    KBITD_RETURN_IF_ERROR(LoadPrequantized(ctx, it->second, w));
  } else if (ctx.prequantized && !IsModuleSkipped(ctx.skip_modules, prefix)) {
    // transformers refuses this too: serving the plain weights would ignore the config that says
    // they are quantized (and its memory and accuracy promises).
    const QuantizationConfig& q = *ctx.config.quantization;
    if (q.gptq.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json declares GPTQ quantization (quantization_config.quant_method \"gptq\") but "
          "linear ",
          prefix, " has no GPTQ tensors (no ", prefix,
          ".qweight in the checkpoint): remove quantization_config to load the weights as they "
          "are"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json declares bitsandbytes ", q.load_in_4bit ? "4-bit" : "8-bit",
        " quantization (quantization_config) but tensor ", prefix,
        ".weight has no bitsandbytes quantization state (no ",
        QuantStateMarker(prefix, q.load_in_4bit, q.bnb_4bit_quant_type),
        " in the checkpoint): remove quantization_config to load the weights as they are, or "
        "quantize them (LoadModel's quantization, kbitq)"));
  }
  if (w->is_dense()) {
    const std::string name = prefix + ".weight";
    KBITD_ASSIGN_OR_RETURN(TensorView view, GetFloat(ctx, name, {out, in}));
    w->original_dtype = view.dtype;
    if (ctx.quantize.has_value() && !IsModuleSkipped(ctx.skip_modules, prefix)) {
      KBITD_RETURN_IF_ERROR(QuantizeLinear(ctx, view, w));
    } else {
      KBITD_ASSIGN_OR_RETURN(Buffer dense, CopyBytes(ctx, view));
      w->dense = dense.View(view.dtype, {out, in});
      w->storage.push_back(std::move(dense));
    }
    ctx.Consumed(name);
  }
  if (has_bias) {
    KBITD_ASSIGN_OR_RETURN(w->bias, LoadFloatVector(ctx, prefix + ".bias", out, &w->storage));
  }
  return absl::OkStatus();
}

absl::Status LoadLayer(LoadContext& ctx, int64_t i, LayerWeights* layer) {
  const ModelConfig& c = ctx.config;
  const std::string p = absl::StrCat("model.layers.", i);
  KBITD_ASSIGN_OR_RETURN(layer->input_layernorm, LoadFloatVector(ctx, p + ".input_layernorm.weight",
                                                                 c.hidden_size, &layer->storage));
  KBITD_ASSIGN_OR_RETURN(
      layer->post_attention_layernorm,
      LoadFloatVector(ctx, p + ".post_attention_layernorm.weight", c.hidden_size, &layer->storage));
  const std::string a = p + ".self_attn", m = p + ".mlp";
  KBITD_RETURN_IF_ERROR(
      LoadLinear(ctx, a + ".q_proj", c.q_size(), c.hidden_size, c.attention_bias, &layer->q_proj));
  KBITD_RETURN_IF_ERROR(
      LoadLinear(ctx, a + ".k_proj", c.kv_size(), c.hidden_size, c.attention_bias, &layer->k_proj));
  KBITD_RETURN_IF_ERROR(
      LoadLinear(ctx, a + ".v_proj", c.kv_size(), c.hidden_size, c.attention_bias, &layer->v_proj));
  KBITD_RETURN_IF_ERROR(
      LoadLinear(ctx, a + ".o_proj", c.hidden_size, c.q_size(), c.o_proj_bias, &layer->o_proj));
  KBITD_RETURN_IF_ERROR(LoadLinear(ctx, m + ".gate_proj", c.intermediate_size, c.hidden_size,
                                   c.mlp_bias, &layer->gate_proj));
  KBITD_RETURN_IF_ERROR(LoadLinear(ctx, m + ".up_proj", c.intermediate_size, c.hidden_size,
                                   c.mlp_bias, &layer->up_proj));
  KBITD_RETURN_IF_ERROR(LoadLinear(ctx, m + ".down_proj", c.hidden_size, c.intermediate_size,
                                   c.mlp_bias, &layer->down_proj));
  return absl::OkStatus();
}

absl::Status CheckFileExists(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " not found: ", path));
  }
  return absl::OkStatus();
}

// Loads tokenizer.json; every token id it can produce must index the embedding.
absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizer(const std::string& path,
                                                               int64_t vocab_size) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromFile(path);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  if ((*tokenizer)->vocab_size() > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tokenizer produces token id ", (*tokenizer)->vocab_size() - 1,
                     " but the model's vocab_size is ", vocab_size,
                     " (tokenizer and checkpoint do not belong together)"));
  }
  return std::shared_ptr<const Tokenizer>(std::move(*tokenizer));
}

}  // namespace

// Everything LoadModel decides before it reads a weight: the config, tokenizer and checkpoint
// index, how linears are quantized, the module sizes, the model's own max_memory limits (held
// for as long as the model is) and the placement plan. PlanLoad stops here.
struct Prepared {
  ModelConfig config;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::unique_ptr<Checkpoint> checkpoint;
  LinearQuantization linears;
  ModuleSizes sizes;
  std::vector<std::shared_ptr<void>> memory_limits;
  PlacementPlan plan;
  ScalarType compute_dtype = ScalarType::kFloat32;
};

absl::StatusOr<Prepared> Prepare(const LoadOptions& options) {
  if (options.devices == nullptr) {
    return absl::InvalidArgumentError("LoadModel: no devices to load onto");
  }
  const std::string dir = options.path;
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(dir, ec);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("model folder not found: ", dir));
  }
  // A path to one of the checkpoint's files (config.json, model.safetensors) is a common slip;
  // "not found" would send the user looking for a file that is there.
  if (!std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, std::filesystem::is_regular_file(status) ? " is a file" : " exists",
        ", not a folder: give the checkpoint folder (config.json, tokenizer.json, *.safetensors)"));
  }
  KBITD_RETURN_IF_ERROR(CheckFileExists(dir + "/config.json", "config.json"));
  KBITD_ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(dir + "/config.json"));
  std::shared_ptr<const Tokenizer> tokenizer;
  if (options.require_tokenizer) {
    KBITD_RETURN_IF_ERROR(CheckFileExists(dir + "/tokenizer.json", "tokenizer.json"));
  }
  if (std::filesystem::exists(dir + "/tokenizer.json", ec)) {
    KBITD_ASSIGN_OR_RETURN(tokenizer, LoadTokenizer(dir + "/tokenizer.json", config.vocab_size));
  }
  if (options.compute_dtype.has_value() && *options.compute_dtype != ScalarType::kFloat32 &&
      *options.compute_dtype != ScalarType::kFloat16 &&
      *options.compute_dtype != ScalarType::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("compute dtype ", std::string(TorchDtypeName(*options.compute_dtype)),
                     " is not a floating-point dtype (float32, float16 or bfloat16)"));
  }
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  KBITD_ASSIGN_OR_RETURN(LinearQuantization linears,
                         ResolveLinearQuantization(config, options.quantization));
  if (linears.prequantized && options.quantization.has_value() &&
      options.quantization->quantized()) {
    KBITD_LOG(Warning) << dir << " is already quantized; the requested quantization is ignored";
  }

  // Placement before any weight is read: every module's stored bytes from the checkpoint's
  // headers, each device's budget (what is left of its pool within the model's own max_memory),
  // then the plan the loading below follows.
  KBITD_ASSIGN_OR_RETURN(ModuleSizes sizes,
                         ComputeModuleSizes(config, TensorTableOf(*checkpoint), linears.quantize));
  std::vector<std::shared_ptr<void>> memory_limits;  // the model's own max_memory per device
  std::vector<DeviceBudget> budgets;
  {
    bool have_cuda = false;
    for (const Device& device : options.devices->devices()) have_cuda |= !device.is_cpu();
    KBITD_ASSIGN_OR_RETURN(PlacementPlan limits, MakePlacementPlan(options.placement, have_cuda));
    for (const Device& device : options.devices->devices()) {
      KBITD_ASSIGN_OR_RETURN(std::shared_ptr<MemoryPool> device_pool,
                             options.devices->Pool(device));
      memory_limits.push_back(device_pool->LimitOwner(options.name, limits.MaxBytes(device)));
      const int64_t left = device_pool->owner_bytes_left(options.name);
      budgets.push_back({device, left < 0 ? kUnlimitedBytes : left});
    }
  }
  absl::StatusOr<PlacementPlan> planned = MakePlacementPlan(options.placement, sizes, budgets);
  if (planned.status().code() == absl::StatusCode::kResourceExhausted) {
    return absl::ResourceExhaustedError(
        absl::StrCat(options.name, " does not fit (", sizes.total_bytes(),
                     " bytes of weights): ", planned.status().message(),
                     "; a device's budget is what is left of its max_memory, within this model's "
                     "placement.max_memory"));
  }
  KBITD_ASSIGN_OR_RETURN(PlacementPlan plan, std::move(planned));
  if (linears.prequantized && config.quantization->gptq.has_value()) {
    // Refused here, before any weight is read, rather than at the first generate.
    for (const PlacementEntry& entry : plan.entries) {
      if (!entry.device.is_cpu()) {
        return absl::UnimplementedError(absl::StrCat(
            options.name, ": GPTQ weights are served on the CPU backend only so far, and the ",
            "placement puts ", entry.module, " on ", entry.device.ToString(),
            "; load it with device_map \"cpu\""));
      }
    }
  }
  // Activations: the request's dtype, else the checkpoint's; 4-bit models compute in
  // bnb_4bit_compute_dtype, the dtype of their quantized matmuls, as transformers + bnb do.
  ScalarType compute_dtype = options.compute_dtype.value_or(config.torch_dtype);
  const QuantizationConfig* qc = linears.quantize       ? &*linears.quantize
                                 : linears.prequantized ? &*config.quantization
                                                        : nullptr;
  if (qc != nullptr && qc->load_in_4bit) compute_dtype = qc->bnb_4bit_compute_dtype;
  return Prepared{.config = std::move(config),
                  .tokenizer = std::move(tokenizer),
                  .checkpoint = std::move(checkpoint),
                  .linears = std::move(linears),
                  .sizes = std::move(sizes),
                  .memory_limits = std::move(memory_limits),
                  .plan = std::move(plan),
                  .compute_dtype = compute_dtype};
}

absl::StatusOr<LoadPlan> PlanLoad(const LoadOptions& options) {
  KBITD_ASSIGN_OR_RETURN(Prepared prepared, Prepare(options));
  LoadPlan out;
  out.architecture = prepared.config.architecture;
  out.weight_bytes = prepared.sizes.total_bytes();
  out.compute_dtype = prepared.compute_dtype;
  out.plan = std::move(prepared.plan);
  return out;
}

absl::StatusOr<std::shared_ptr<Model>> LoadModel(const LoadOptions& options) {
  KBITD_ASSIGN_OR_RETURN(Prepared prepared, Prepare(options));
  const std::string& dir = options.path;
  ModelConfig& config = prepared.config;
  Checkpoint* checkpoint = prepared.checkpoint.get();
  const LinearQuantization& linears = prepared.linears;
  const PlacementPlan& plan = prepared.plan;
  KBITD_LOG(Info) << options.name << " placement: " << FormatPlacementPlan(plan);
  // The engine runs where the layers are; the host is the home of a model placed nowhere else.
  const Device home = plan.DeviceFor("model.layers.0");
  KBITD_ASSIGN_OR_RETURN(std::shared_ptr<MemoryPool> pool, options.devices->Pool(home));

  LoadContext ctx{options, config, *checkpoint, plan};
  ctx.prequantized = linears.prequantized;
  ctx.quantize = linears.quantize;
  ctx.skip_modules = linears.skip_modules;
  if (ctx.prequantized && config.quantization->gptq.has_value()) {
    ctx.gptq = config.quantization->gptq->Params();
  }
  if (ctx.prequantized) {
    KBITD_ASSIGN_OR_RETURN(QuantizedLayout layout, FindQuantizedModules(*checkpoint));
    for (QuantizedModule& module : layout.modules) {
      std::string prefix = module.prefix;
      ctx.quantized_modules.emplace(std::move(prefix), std::move(module));
    }
  }
  ctx.progress.tensors_total = static_cast<int64_t>(checkpoint->TensorNames().size());
  ctx.progress.bytes_total = static_cast<int64_t>(checkpoint->TotalBytes());

  Model::Parts parts;
  parts.name = options.name;
  parts.config = config;
  parts.tokenizer = std::move(prepared.tokenizer);
  parts.devices = options.devices;
  parts.pool = pool;
  parts.memory_limits = std::move(prepared.memory_limits);
  parts.placement = plan;
  parts.compute_dtype = prepared.compute_dtype;
  ModelWeights& w = parts.weights;
  {
    KBITD_RETURN_IF_ERROR(UseDeviceOf(ctx, "model.embed_tokens"));
    const std::string name = "model.embed_tokens.weight";
    KBITD_ASSIGN_OR_RETURN(TensorView view,
                           GetFloat(ctx, name, {config.vocab_size, config.hidden_size}));
    KBITD_ASSIGN_OR_RETURN(Buffer embed, CopyBytes(ctx, view));
    w.embed_tokens = embed.View(view.dtype, {config.vocab_size, config.hidden_size});
    w.storage.push_back(std::move(embed));
    ctx.parameter_count += config.vocab_size * config.hidden_size;
    ctx.Consumed(name);
  }
  w.layers.resize(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    KBITD_RETURN_IF_ERROR(UseDeviceOf(ctx, absl::StrCat("model.layers.", i)));
    KBITD_RETURN_IF_ERROR(LoadLayer(ctx, i, &w.layers[i]));
  }
  KBITD_RETURN_IF_ERROR(UseDeviceOf(ctx, "model.norm"));
  KBITD_ASSIGN_OR_RETURN(w.final_norm,
                         LoadFloatVector(ctx, "model.norm.weight", config.hidden_size, &w.storage));
  if (config.tie_word_embeddings) {
    // save_pretrained drops the tied lm_head.weight; the head reads the embedding.
    w.lm_head.name = "lm_head";
    w.lm_head.out_features = config.vocab_size;
    w.lm_head.in_features = config.hidden_size;
    w.lm_head.original_dtype = w.embed_tokens.dtype;
    w.lm_head.dense = w.embed_tokens;
    if (checkpoint->Contains("lm_head.weight")) ctx.Consumed("lm_head.weight");
  } else {
    KBITD_RETURN_IF_ERROR(UseDeviceOf(ctx, "lm_head"));
    KBITD_RETURN_IF_ERROR(
        LoadLinear(ctx, "lm_head", config.vocab_size, config.hidden_size, false, &w.lm_head));
  }
  parts.parameter_count = ctx.parameter_count;
  KBITD_LOG(Info) << "loaded " << options.name << " from " << dir << ": " << parts.parameter_count
                  << " parameters, " << pool->owner_bytes(options.name, MemoryCategory::kWeights)
                  << " weight bytes";
  return std::make_shared<Model>(std::move(parts));
}

}  // namespace kbitd::runtime
