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

LlamaForward::LlamaForward(const Model& model, Backend& backend)
    : model_(model), backend_(backend), inv_freq_(RopeInverseFrequencies(model.config())) {}

namespace {
struct Layout {
  int64_t hidden, normed, q, k, v, attn, o, gate, up, act, down, gathered, logits, total;
};
Layout MakeLayout(const ModelConfig& c, int64_t t, int64_t r) {
  Layout l;
  int64_t off = 0;
  auto take = [&](int64_t floats) {
    int64_t at = off;
    off += (floats + 15) / 16 * 16;
    return at;
  };
  l.hidden = take(t * c.hidden_size);
  l.normed = take(t * c.hidden_size);
  l.q = take(t * c.q_size());
  l.k = take(t * c.kv_size());
  l.v = take(t * c.kv_size());
  l.attn = take(t * c.q_size());
  l.o = take(t * c.hidden_size);
  l.gate = take(t * c.intermediate_size);
  l.up = take(t * c.intermediate_size);
  l.act = take(t * c.intermediate_size);
  l.down = take(t * c.hidden_size);
  l.gathered = take(r * c.hidden_size);
  l.logits = take(r * c.vocab_size);
  l.total = off;
  return l;
}
}  // namespace

absl::Status LlamaForward::EnsureWorkspace(int64_t tokens, int64_t rows) {
  if (tokens <= capacity_tokens_ && rows <= capacity_rows_) return absl::OkStatus();
  int64_t t = std::max(tokens, capacity_tokens_), r = std::max(rows, capacity_rows_);
  Layout layout = MakeLayout(model_.config(), t, r);
  workspace_.Reset();
  KBITD_ASSIGN_OR_RETURN(workspace_,
                         model_.host_pool()->Allocate(layout.total * sizeof(float),
                                                      MemoryCategory::kWorkspace, model_.name()));
  capacity_tokens_ = t;
  capacity_rows_ = r;
  return absl::OkStatus();
}

absl::Status LlamaForward::Linear(const LinearWeight& weight, const Tensor& x, Tensor y,
                                  KernelObserver* observer) {
  ScopedKernelTimer timer(
      observer, weight.is_dense() ? KernelKind::kDenseMatmul : KernelKind::kQuantizedMatmul);
  return backend_.Linear(weight, x, y);
}

absl::Status LlamaForward::Run(const ForwardBatch& batch, KvCache& cache,
                               std::vector<float>* logits, KernelObserver* observer) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const int64_t t = static_cast<int64_t>(batch.tokens.size());
  const int64_t r = static_cast<int64_t>(batch.logit_rows.size());
  if (t == 0) return absl::InvalidArgumentError("forward batch has no tokens");
  KBITD_RETURN_IF_ERROR(EnsureWorkspace(t, r));
  const Layout l = MakeLayout(c, capacity_tokens_, capacity_rows_);
  Tensor hidden = Tensor::F32(Slice(l.hidden), {t, c.hidden_size});
  Tensor normed = Tensor::F32(Slice(l.normed), {t, c.hidden_size});
  Tensor q = Tensor::F32(Slice(l.q), {t, c.q_size()});
  Tensor k = Tensor::F32(Slice(l.k), {t, c.kv_size()});
  Tensor v = Tensor::F32(Slice(l.v), {t, c.kv_size()});
  Tensor attn = Tensor::F32(Slice(l.attn), {t, c.q_size()});
  Tensor o = Tensor::F32(Slice(l.o), {t, c.hidden_size});
  Tensor gate = Tensor::F32(Slice(l.gate), {t, c.intermediate_size});
  Tensor up = Tensor::F32(Slice(l.up), {t, c.intermediate_size});
  Tensor act = Tensor::F32(Slice(l.act), {t, c.intermediate_size});
  Tensor down = Tensor::F32(Slice(l.down), {t, c.hidden_size});
  const float eps = static_cast<float>(c.rms_norm_eps);
  const ScalarType cd = model_.compute_dtype();
  auto norm = [&](const Tensor& x, const Tensor& weight, Tensor y) {
    ScopedKernelTimer timer(observer, KernelKind::kNorm);
    backend_.RmsNorm(x, weight.as<const float>(), eps, y);
  };

  {
    ScopedKernelTimer timer(observer, KernelKind::kEmbedding);
    backend_.Embedding(w, batch.tokens.data(), hidden);
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& layer = w.layers[i];
    norm(hidden, layer.input_layernorm, normed);
    backend_.RoundTo(normed, cd);
    KBITD_RETURN_IF_ERROR(Linear(layer.q_proj, normed, q, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.k_proj, normed, k, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.v_proj, normed, v, observer));
    {
      ScopedKernelTimer timer(observer, KernelKind::kRope);
      backend_.Rope(q, k, c.head_dim, batch.attention.positions.data(), inv_freq_);
    }
    {
      ScopedKernelTimer timer(observer, KernelKind::kAttention);
      backend_.WriteKv(cache, i, k, v, batch.attention);
      backend_.Attention(cache, i, q, batch.attention, c.num_attention_heads, c.num_key_value_heads,
                         c.head_dim, attn);
    }
    backend_.RoundTo(attn, cd);
    KBITD_RETURN_IF_ERROR(Linear(layer.o_proj, attn, o, observer));
    backend_.Add(hidden, o);
    norm(hidden, layer.post_attention_layernorm, normed);
    backend_.RoundTo(normed, cd);
    KBITD_RETURN_IF_ERROR(Linear(layer.gate_proj, normed, gate, observer));
    KBITD_RETURN_IF_ERROR(Linear(layer.up_proj, normed, up, observer));
    {
      ScopedKernelTimer timer(observer, KernelKind::kActivation);
      backend_.SiluMul(gate, up, act);
    }
    backend_.RoundTo(act, cd);
    KBITD_RETURN_IF_ERROR(Linear(layer.down_proj, act, down, observer));
    backend_.Add(hidden, down);
  }
  logits->clear();
  if (r == 0) return absl::OkStatus();
  Tensor gathered = Tensor::F32(Slice(l.gathered), {r, c.hidden_size});
  Tensor gathered_normed = Tensor::F32(Slice(l.normed), {r, c.hidden_size});
  Tensor out = Tensor::F32(Slice(l.logits), {r, c.vocab_size});
  backend_.GatherRows(hidden, batch.logit_rows, gathered);
  norm(gathered, w.final_norm, gathered_normed);
  backend_.RoundTo(gathered_normed, cd);
  KBITD_RETURN_IF_ERROR(Linear(w.lm_head, gathered_normed, out, observer));
  logits->resize(r * c.vocab_size);
  backend_.CopyToHost(out, logits->data());
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
