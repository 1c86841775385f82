#include "runtime/llama_forward.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {

std::vector<float> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t dim = config.head_dim;
  std::vector<float> inv_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    // 1 / base ** (arange(0, dim, 2) / dim), evaluated in float32 as transformers does.
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(config.rope_theta), exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) {
    for (float& f : inv_freq) f = static_cast<float>(f / s.factor);
  } else if (s.type == RopeScaling::Type::kLlama3) {
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (float& f : inv_freq) {
      double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else if (wavelen >= high_wavelen) {  // medium band: smooth interpolation
        double smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
  }
  return inv_freq;
}

// Where each tensor of a step sits in the workspace: byte offsets, for a capacity of `tokens`
// tokens, `sequences` sequences of `max_blocks` KV blocks and `rows` logit rows.
struct LlamaForward::Layout {
  int64_t tokens = 0, sequences = 0, max_blocks = 0, rows = 0;
  // Activations (activation dtype).
  int64_t hidden, normed, q, k, v, attn, o, gate, up, act, down, gathered;
  // Step inputs (int32) and logits (float32).
  int64_t token_ids, positions, token_sequence, block_tables, logit_rows, logits;
  int64_t greedy_tokens, greedy_logprobs;  // int32 / float32 [rows]
  int64_t total = 0;

  Layout(const ModelConfig& c, ScalarType activation, int64_t t, int64_t s, int64_t b, int64_t r)
      : tokens(t), sequences(s), max_blocks(b), rows(r) {
    const int64_t a = static_cast<int64_t>(ScalarTypeSize(activation));
    // 256-byte alignment: what vectorised loads and CUDA kernels want of every tensor.
    auto take = [&](int64_t bytes) {
      int64_t at = total;
      total += (bytes + 255) / 256 * 256;
      return at;
    };
    hidden = take(t * c.hidden_size * a);
    normed = take(t * c.hidden_size * a);
    q = take(t * c.q_size() * a);
    k = take(t * c.kv_size() * a);
    v = take(t * c.kv_size() * a);
    attn = take(t * c.q_size() * a);
    o = take(t * c.hidden_size * a);
    gate = take(t * c.intermediate_size * a);
    up = take(t * c.intermediate_size * a);
    act = take(t * c.intermediate_size * a);
    down = take(t * c.hidden_size * a);
    gathered = take(r * c.hidden_size * a);
    token_ids = take(t * 4);
    positions = take(t * 4);
    token_sequence = take(t * 4);
    block_tables = take(s * b * 4);
    logit_rows = take(r * 4);
    logits = take(r * c.vocab_size * 4);
    greedy_tokens = take(r * 4);
    greedy_logprobs = take(r * 4);
  }
  bool Holds(int64_t t, int64_t s, int64_t b, int64_t r) const {
    return t <= tokens && s <= sequences && b <= max_blocks && r <= rows;
  }
};

LlamaForward::LlamaForward(const Model& model, Backend& backend)
    : model_(model),
      backend_(backend),
      activation_dtype_(backend.ActivationDtype(model.compute_dtype())) {}

LlamaForward::~LlamaForward() = default;

absl::StatusOr<std::unique_ptr<LlamaForward>> LlamaForward::Create(const Model& model,
                                                                   Backend& backend) {
  if (!(backend.device() == model.device())) {
    return absl::InvalidArgumentError(absl::StrCat("model ", model.name(), " is on ",
                                                   model.device().ToString(), ", the backend on ",
                                                   backend.device().ToString()));
  }
  std::unique_ptr<LlamaForward> forward(new LlamaForward(model, backend));
  const std::vector<float> inv_freq = RopeInverseFrequencies(model.config());
  const int64_t n = static_cast<int64_t>(inv_freq.size());
  KBITD_ASSIGN_OR_RETURN(
      forward->constants_,
      model.pool()->Allocate(n * sizeof(float), MemoryCategory::kWorkspace, model.name()));
  forward->inv_freq_ = forward->constants_.View(ScalarType::kFloat32, {n});
  KBITD_RETURN_IF_ERROR(
      backend.CopyTo(Tensor::Host(inv_freq.data(), ScalarType::kFloat32, {n}), forward->inv_freq_));
  KBITD_RETURN_IF_ERROR(backend.Synchronize());  // inv_freq (a local) must outlive the copy
  return forward;
}

absl::Status LlamaForward::EnsureWorkspace(const ForwardBatch& batch) {
  const int64_t t = static_cast<int64_t>(batch.tokens.size());
  const int64_t s = batch.num_sequences(), b = batch.max_blocks;
  const int64_t r = static_cast<int64_t>(batch.logit_rows.size());
  if (layout_ != nullptr && layout_->Holds(t, s, b, r)) return absl::OkStatus();
  const Layout* old = layout_.get();
  auto grown = std::make_unique<Layout>(
      model_.config(), activation_dtype_, std::max(t, old ? old->tokens : 0),
      std::max(s, old ? old->sequences : 0), std::max(b, old ? old->max_blocks : 0),
      std::max(r, old ? old->rows : 0));
  workspace_.Reset();
  layout_.reset();
  KBITD_ASSIGN_OR_RETURN(
      workspace_, model_.pool()->Allocate(grown->total, MemoryCategory::kWorkspace, model_.name()));
  layout_ = std::move(grown);
  return absl::OkStatus();
}

absl::Status LlamaForward::Linear(const LinearWeight& weight, const Tensor& x, Tensor y,
                                  KernelObserver* observer) {
  ScopedKernelTimer timer(
      observer, weight.is_dense() ? KernelKind::kDenseMatmul : KernelKind::kQuantizedMatmul);
  return backend_.Linear(weight, x, y);
}

absl::Status LlamaForward::Run(const ForwardBatch& batch, KvCache& cache, ForwardOutput* result,
                               KernelObserver* observer) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const int64_t t = static_cast<int64_t>(batch.tokens.size());
  const int64_t r = static_cast<int64_t>(batch.logit_rows.size());
  const int64_t s = batch.num_sequences();
  if (t == 0) return absl::InvalidArgumentError("forward batch has no tokens");
  if (static_cast<int64_t>(batch.positions.size()) != t ||
      static_cast<int64_t>(batch.token_sequence.size()) != t || s <= 0 ||
      static_cast<int64_t>(batch.block_tables.size()) != s * batch.max_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward batch: ", t, " tokens, ", batch.positions.size(), " positions, ",
                     batch.token_sequence.size(), " sequence indices, ", batch.block_tables.size(),
                     " block table entries of ", batch.max_blocks, " per sequence"));
  }
  KBITD_RETURN_IF_ERROR(EnsureWorkspace(batch));
  const Layout& l = *layout_;
  const ScalarType ad = activation_dtype_;
  char* base = workspace_.as<char>();
  const Device device = workspace_.device();
  auto at = [&](int64_t offset, ScalarType dtype, std::initializer_list<int64_t> dims) {
    return Tensor::Make(base + offset, dtype, dims, device);
  };
  Tensor hidden = at(l.hidden, ad, {t, c.hidden_size});
  Tensor normed = at(l.normed, ad, {t, c.hidden_size});
  Tensor q = at(l.q, ad, {t, c.q_size()});
  Tensor k = at(l.k, ad, {t, c.kv_size()});
  Tensor v = at(l.v, ad, {t, c.kv_size()});
  Tensor attn = at(l.attn, ad, {t, c.q_size()});
  Tensor o = at(l.o, ad, {t, c.hidden_size});
  Tensor gate = at(l.gate, ad, {t, c.intermediate_size});
  Tensor up = at(l.up, ad, {t, c.intermediate_size});
  Tensor act = at(l.act, ad, {t, c.intermediate_size});
  Tensor down = at(l.down, ad, {t, c.hidden_size});

  // The step's inputs go to the device once.
  StepInputs step;
  step.tokens = at(l.token_ids, ScalarType::kInt32, {t});
  step.positions = at(l.positions, ScalarType::kInt32, {t});
  step.token_sequence = at(l.token_sequence, ScalarType::kInt32, {t});
  step.block_tables = at(l.block_tables, ScalarType::kInt32, {s, batch.max_blocks});
  step.logit_rows = at(l.logit_rows, ScalarType::kInt32, {r});
  auto upload = [&](const std::vector<int32_t>& host, Tensor dst) {
    Tensor src = dst;
    src.data = const_cast<int32_t*>(host.data());
    src.device = Device::Cpu();
    return backend_.CopyTo(src, dst);
  };
  KBITD_RETURN_IF_ERROR(upload(batch.tokens, step.tokens));
  KBITD_RETURN_IF_ERROR(upload(batch.positions, step.positions));
  KBITD_RETURN_IF_ERROR(upload(batch.token_sequence, step.token_sequence));
  KBITD_RETURN_IF_ERROR(upload(batch.block_tables, step.block_tables));
  if (r > 0) KBITD_RETURN_IF_ERROR(upload(batch.logit_rows, step.logit_rows));

  const float eps = static_cast<float>(c.rms_norm_eps);
  const ScalarType cd = model_.compute_dtype();
  const AttentionShape attention_shape{c.num_attention_heads, c.num_key_value_heads, c.head_dim};
  auto norm = [&](const Tensor& x, const Tensor& weight, Tensor y) {
    ScopedKernelTimer timer(observer, KernelKind::kNorm);
    return backend_.RmsNorm(x, weight, eps, y);
  };

  {
    ScopedKernelTimer timer(observer, KernelKind::kEmbedding);
    KBITD_RETURN_IF_ERROR(backend_.Embedding(w.embed_tokens, step.tokens, hidden));
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = w.layers[i];
    KBITD_RETURN_IF_ERROR(backend_.Prefetch(layer));
    KBITD_RETURN_IF_ERROR(norm(hidden, layer.input_layernorm, normed));
    KBITD_RETURN_IF_ERROR(backend_.RoundTo(normed, cd));
    KBITD_RETURN_IF_ERROR(Linear(layer.q_proj, normed, q, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.k_proj, normed, k, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.v_proj, normed, v, observer));
    {
      ScopedKernelTimer timer(observer, KernelKind::kRope);
      KBITD_RETURN_IF_ERROR(backend_.Rope(q, k, c.head_dim, step.positions, inv_freq_));
    }
    {
      ScopedKernelTimer timer(observer, KernelKind::kAttention);
      KBITD_RETURN_IF_ERROR(backend_.WriteKv(cache, i, k, v, step));
      KBITD_RETURN_IF_ERROR(backend_.Attention(cache, i, q, step, attention_shape, attn));
    }
    KBITD_RETURN_IF_ERROR(backend_.RoundTo(attn, cd));
    KBITD_RETURN_IF_ERROR(Linear(layer.o_proj, attn, o, observer));
    KBITD_RETURN_IF_ERROR(backend_.Add(hidden, o));
    KBITD_RETURN_IF_ERROR(norm(hidden, layer.post_attention_layernorm, normed));
    KBITD_RETURN_IF_ERROR(backend_.RoundTo(normed, cd));
    KBITD_RETURN_IF_ERROR(Linear(layer.gate_proj, normed, gate, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.up_proj, normed, up, observer));
    {
      ScopedKernelTimer timer(observer, KernelKind::kActivation);
      KBITD_RETURN_IF_ERROR(backend_.SiluMul(gate, up, act));
    }
    KBITD_RETURN_IF_ERROR(backend_.RoundTo(act, cd));
    KBITD_RETURN_IF_ERROR(Linear(layer.down_proj, act, down, observer));
    KBITD_RETURN_IF_ERROR(backend_.Add(hidden, down));
  }
  result->logits.clear();
  result->tokens.clear();
  result->logprobs.clear();
  if (r == 0) return backend_.Synchronize();
  Tensor gathered = at(l.gathered, ad, {r, c.hidden_size});
  Tensor gathered_normed = at(l.normed, ad, {r, c.hidden_size});
  Tensor out = at(l.logits, ScalarType::kFloat32, {r, c.vocab_size});
  KBITD_RETURN_IF_ERROR(backend_.GatherRows(hidden, step.logit_rows, gathered));
  KBITD_RETURN_IF_ERROR(norm(gathered, w.final_norm, gathered_normed));
  KBITD_RETURN_IF_ERROR(backend_.RoundTo(gathered_normed, cd));
  KBITD_RETURN_IF_ERROR(Linear(w.lm_head, gathered_normed, out, observer));
  if (batch.greedy) {
    Tensor tokens = at(l.greedy_tokens, ScalarType::kInt32, {r});
    Tensor logprobs = at(l.greedy_logprobs, ScalarType::kFloat32, {r});
    {
      ScopedKernelTimer timer(observer, KernelKind::kSampling);
      KBITD_RETURN_IF_ERROR(backend_.GreedySample(out, tokens, logprobs));
    }
    result->tokens.resize(r);
    result->logprobs.resize(r);
    KBITD_RETURN_IF_ERROR(
        backend_.CopyTo(tokens, Tensor::Make(result->tokens.data(), ScalarType::kInt32, {r})));
    KBITD_RETURN_IF_ERROR(backend_.CopyTo(
        logprobs, Tensor::Make(result->logprobs.data(), ScalarType::kFloat32, {r})));
    return backend_.Synchronize();
  }
  result->logits.resize(r * c.vocab_size);
  KBITD_RETURN_IF_ERROR(backend_.CopyTo(
      out, Tensor::Make(result->logits.data(), ScalarType::kFloat32, {r, c.vocab_size})));
  return backend_.Synchronize();
}

}  // namespace kbitd::runtime
