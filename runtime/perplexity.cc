#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/kv_cache.h"
#include "runtime/llama_forward.h"

namespace kbitd::runtime {
namespace {

constexpr int32_t kKvBlockSize = 16;
constexpr uint64_t kSequence = 0;

// -log softmax(logits)[target], accumulated in double so that 30k-token sums stay exact to far
// below the differences the quality table reports.
double NegativeLogLikelihood(const float* logits, int64_t vocab, int32_t target) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < vocab; ++v) max_logit = std::max(max_logit, logits[v]);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - max_logit);
  return std::log(sum) + max_logit - static_cast<double>(logits[target]);
}

}  // namespace

double NllSum::Perplexity() const {
  if (tokens == 0) return std::numeric_limits<double>::quiet_NaN();
  return std::exp(nll / static_cast<double>(tokens));
}

absl::StatusOr<NllSum> ScoreTokens(const Model& model, Backend& backend,
                                   const std::vector<int32_t>& ids,
                                   const PerplexityOptions& options) {
  const ModelConfig& c = model.config();
  int64_t context = c.max_position_embeddings;
  if (c.sliding_window.has_value()) context = std::min<int64_t>(context, *c.sliding_window);
  if (options.window < 1 || options.window > context) {
    return absl::InvalidArgumentError(absl::StrCat("perplexity window ", options.window,
                                                   " must be in [1, ", context,
                                                   "] (the model's context)"));
  }
  if (ids.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity needs at least 2 tokens, got ", ids.size()));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i, " has id ", ids[i],
                                                     " outside the vocabulary of ", c.vocab_size));
    }
  }

  KvCache::Options kv;
  kv.num_layers = c.num_hidden_layers;
  kv.num_kv_heads = c.num_key_value_heads;
  kv.head_dim = c.head_dim;
  kv.block_size = kKvBlockSize;
  kv.num_blocks = (options.window + kKvBlockSize - 1) / kKvBlockSize;
  kv.dtype = backend.KvCacheDtype(model.compute_dtype());
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<LlamaForward> forward,
                         LlamaForward::Create(model, backend));
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                         KvCache::Create(kv, *model.pool(), model.name()));

  NllSum result;
  const int64_t total = static_cast<int64_t>(ids.size()) - 1;
  ForwardOutput output;
  for (int64_t start = 0; start < total; start += options.window) {
    const int64_t n = std::min<int64_t>(options.window, total - start);
    cache->Free(kSequence);  // every window starts from an empty context
    KBITD_RETURN_IF_ERROR(cache->Reserve(kSequence, n));
    ForwardBatch batch;
    batch.max_blocks = static_cast<int64_t>(cache->BlockTable(kSequence)->size());
    batch.block_tables.resize(batch.max_blocks);
    KBITD_RETURN_IF_ERROR(
        cache->FillBlockTable(kSequence, batch.max_blocks, batch.block_tables.data()));
    for (int64_t i = 0; i < n; ++i) {
      batch.tokens.push_back(ids[start + i]);
      batch.positions.push_back(static_cast<int32_t>(i));
      batch.token_sequence.push_back(0);
      batch.logit_rows.push_back(static_cast<int32_t>(i));
    }
    KBITD_RETURN_IF_ERROR(forward->Run(batch, *cache, &output));
    for (int64_t i = 0; i < n; ++i) {
      result.nll += NegativeLogLikelihood(output.logits.data() + i * c.vocab_size, c.vocab_size,
                                          ids[start + i + 1]);
    }
    result.tokens += n;
    if (options.progress && !options.progress(result.tokens, total)) {
      return absl::CancelledError(
          absl::StrCat("perplexity evaluation cancelled after ", result.tokens, " tokens"));
    }
  }
  return result;
}

}  // namespace kbitd::runtime
