#include "runtime/engine.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/kv_cache.h"
#include "runtime/llama_forward.h"
#include "runtime/sampler.h"

namespace kbitd::runtime {

struct Engine::Impl {
  struct Sequence {
    std::vector<int32_t> tokens;  // prompt followed by sampled tokens
    int32_t prompt_length = 0;
    int32_t processed = 0;  // tokens whose K/V are in the cache
    SamplingParams params;
    uint64_t sampled = 0;  // RNG counter: tokens sampled so far
    std::vector<float> last_logits;
  };

  std::shared_ptr<const Model> model;
  Options options;
  int32_t max_context = 0;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<LlamaForward> forward;
  std::unordered_map<uint64_t, Sequence> sequences;
  ForwardOutput output;
  uint64_t steps = 0;  // forwards run, for kernel timing sampling
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       Backend& backend, const Options& options) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine::Create: model is null");
  if (options.kv_block_size <= 0 || options.kv_cache_bytes < 0 || options.kv_cache_tokens < 0 ||
      options.max_batch_size <= 0 || options.max_context < 0 ||
      options.kernel_timing_interval <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: kv_block_size (", options.kv_block_size, "), max_batch_size (",
        options.max_batch_size, ") and kernel_timing_interval (", options.kernel_timing_interval,
        ") must be > 0, kv_cache_bytes (", options.kv_cache_bytes, "), kv_cache_tokens (",
        options.kv_cache_tokens, ") and max_context (", options.max_context, ") >= 0"));
  }
  const ModelConfig& c = model->config();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  int64_t max_context = c.max_position_embeddings;
  if (c.sliding_window.has_value()) max_context = std::min(max_context, *c.sliding_window);
  if (options.max_context > 0) {
    if (options.max_context > max_context) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine max_context ", options.max_context, " exceeds the model's limit ",
                       max_context, " (max_position_embeddings / sliding_window)"));
    }
    max_context = options.max_context;
  }
  impl->max_context = static_cast<int32_t>(std::min<int64_t>(max_context, INT32_MAX));
  KvCache::Options kv;
  kv.num_layers = c.num_hidden_layers;
  kv.num_kv_heads = c.num_key_value_heads;
  kv.head_dim = c.head_dim;
  kv.block_size = options.kv_block_size;
  kv.dtype = backend.KvCacheDtype(model->compute_dtype());
  KvCacheBudget budget{.bytes = options.kv_cache_bytes,
                       .tokens = options.kv_cache_tokens,
                       .max_context = impl->max_context,
                       .max_batch_size = options.max_batch_size};
  KBITD_RETURN_IF_ERROR(SetAvailableMemory(*model->pool(), model->name(), &budget));
  KBITD_ASSIGN_OR_RETURN(kv.num_blocks, KvCacheBlocks(kv, budget));
  // The forward first: it checks that the backend runs on the model's device.
  KBITD_ASSIGN_OR_RETURN(impl->forward, LlamaForward::Create(*model, backend));
  KBITD_ASSIGN_OR_RETURN(impl->cache, KvCache::Create(kv, *model->pool(), model->name()));
  impl->model = std::move(model);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const Model& Engine::model() const { return *impl_->model; }
int32_t Engine::max_context() const { return impl_->max_context; }
int32_t Engine::kv_block_size() const { return static_cast<int32_t>(impl_->cache->block_size()); }
int64_t Engine::kv_blocks_total() const { return impl_->cache->num_blocks(); }
int64_t Engine::kv_blocks_free() const { return impl_->cache->num_free_blocks(); }
int64_t Engine::kv_cache_bytes() const { return impl_->cache->bytes(); }
int64_t Engine::kv_cache_tokens() const {
  return impl_->cache->num_blocks() * impl_->cache->block_size();
}
int64_t Engine::KvBlocksNeeded(int64_t tokens) const { return impl_->cache->BlocksNeeded(tokens); }

absl::Status Engine::AddSequence(uint64_t id, std::vector<int32_t> prompt_tokens,
                                 const SamplingParams& params) {
  if (impl_->sequences.count(id) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", id, " already exists"));
  }
  if (prompt_tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", id, ": prompt is empty"));
  }
  if (static_cast<int64_t>(prompt_tokens.size()) > impl_->max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", id, ": prompt of ", prompt_tokens.size(),
                     " tokens is longer than the context of ", impl_->max_context, " tokens"));
  }
  const int64_t vocab = impl_->model->config().vocab_size;
  for (size_t i = 0; i < prompt_tokens.size(); ++i) {
    if (prompt_tokens[i] < 0 || prompt_tokens[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", id, ": token ", prompt_tokens[i], " at index ", i,
                       " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  KBITD_RETURN_IF_ERROR(ValidateSamplingParams(params));
  KBITD_RETURN_IF_ERROR(impl_->cache->Reserve(id, static_cast<int64_t>(prompt_tokens.size())));
  Impl::Sequence seq;
  seq.prompt_length = static_cast<int32_t>(prompt_tokens.size());
  seq.tokens = std::move(prompt_tokens);
  seq.params = params;
  impl_->sequences.emplace(id, std::move(seq));
  return absl::OkStatus();
}

void Engine::RemoveSequence(uint64_t id) {
  impl_->sequences.erase(id);
  impl_->cache->Free(id);
}

bool Engine::HasSequence(uint64_t id) const { return impl_->sequences.count(id) != 0; }

int32_t Engine::RemainingPromptTokens(uint64_t id) const {
  auto it = impl_->sequences.find(id);
  if (it == impl_->sequences.end()) return 0;
  return std::max(0, it->second.prompt_length - it->second.processed);
}

int32_t Engine::SequenceLength(uint64_t id) const {
  auto it = impl_->sequences.find(id);
  return it == impl_->sequences.end() ? 0 : static_cast<int32_t>(it->second.tokens.size());
}

const std::vector<float>& Engine::LastLogits(uint64_t id) const {
  static const std::vector<float> kEmpty;
  auto it = impl_->sequences.find(id);
  return it == impl_->sequences.end() ? kEmpty : it->second.last_logits;
}

absl::StatusOr<std::vector<SampledToken>> Engine::Step(const std::vector<SequenceWork>& work) {
  // Validate everything and count KV blocks before changing any state.
  std::unordered_set<uint64_t> listed;
  int64_t blocks_needed = 0;
  for (const SequenceWork& item : work) {
    auto it = impl_->sequences.find(item.sequence_id);
    if (it == impl_->sequences.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Step: unknown sequence ", item.sequence_id));
    }
    if (!listed.insert(item.sequence_id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Step: sequence ", item.sequence_id, " is listed twice"));
    }
    const Impl::Sequence& seq = it->second;
    const int32_t pending = static_cast<int32_t>(seq.tokens.size()) - seq.processed;
    if (item.num_tokens < 1 || item.num_tokens > pending) {
      return absl::InvalidArgumentError(absl::StrCat("Step: sequence ", item.sequence_id,
                                                     " asks for ", item.num_tokens,
                                                     " tokens but has ", pending, " unprocessed"));
    }
    if (seq.processed + item.num_tokens > impl_->max_context) {
      return absl::InvalidArgumentError(absl::StrCat("Step: sequence ", item.sequence_id,
                                                     " would pass the context of ",
                                                     impl_->max_context, " tokens"));
    }
    blocks_needed +=
        impl_->cache->AdditionalBlocksNeeded(item.sequence_id, seq.processed + item.num_tokens);
  }
  if (blocks_needed > impl_->cache->num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("Step: needs ", blocks_needed,
                                                     " new KV blocks but ",
                                                     impl_->cache->num_free_blocks(), " are free"));
  }
  if (work.empty()) return std::vector<SampledToken>{};

  ForwardBatch batch;
  std::vector<uint64_t> sampled_ids;
  for (const SequenceWork& item : work) {
    Impl::Sequence& seq = impl_->sequences.at(item.sequence_id);
    KBITD_RETURN_IF_ERROR(impl_->cache->Reserve(item.sequence_id, seq.processed + item.num_tokens));
    batch.max_blocks = std::max<int64_t>(
        batch.max_blocks, static_cast<int64_t>(impl_->cache->BlockTable(item.sequence_id)->size()));
  }
  batch.block_tables.resize(work.size() * batch.max_blocks);
  for (size_t s = 0; s < work.size(); ++s) {
    const SequenceWork& item = work[s];
    Impl::Sequence& seq = impl_->sequences.at(item.sequence_id);
    KBITD_RETURN_IF_ERROR(impl_->cache->FillBlockTable(
        item.sequence_id, batch.max_blocks, batch.block_tables.data() + s * batch.max_blocks));
    for (int32_t i = 0; i < item.num_tokens; ++i) {
      batch.tokens.push_back(seq.tokens[seq.processed + i]);
      batch.positions.push_back(seq.processed + i);
      batch.token_sequence.push_back(static_cast<int32_t>(s));
    }
    if (seq.processed + item.num_tokens == static_cast<int32_t>(seq.tokens.size())) {
      batch.logit_rows.push_back(static_cast<int32_t>(batch.tokens.size()) - 1);
      sampled_ids.push_back(item.sequence_id);
    }
  }
  // Plain greedy sequences need only the argmax and its logprob, which the device computes.
  batch.greedy = !impl_->options.keep_last_logits && !sampled_ids.empty();
  for (uint64_t id : sampled_ids) {
    const SamplingParams& p = impl_->sequences.at(id).params;
    batch.greedy = batch.greedy && p.temperature == 0.0f && p.repetition_penalty == 1.0f &&
                   p.top_logprobs == 0;
  }
  // Only sampled steps get the observer; the others run untimed.
  KernelObserver* observer = impl_->steps++ % impl_->options.kernel_timing_interval == 0
                                 ? impl_->options.kernel_observer
                                 : nullptr;
  KBITD_RETURN_IF_ERROR(impl_->forward->Run(batch, *impl_->cache, &impl_->output, observer));
  for (const SequenceWork& item : work) {
    impl_->sequences.at(item.sequence_id).processed += item.num_tokens;
  }
  const int64_t vocab = impl_->model->config().vocab_size;
  std::vector<SampledToken> out;
  out.reserve(sampled_ids.size());
  ScopedKernelTimer sampling_timer(sampled_ids.empty() || batch.greedy ? nullptr : observer,
                                   KernelKind::kSampling);  // a greedy batch timed its kernel
  for (size_t i = 0; i < sampled_ids.size(); ++i) {
    Impl::Sequence& seq = impl_->sequences.at(sampled_ids[i]);
    if (batch.greedy) {
      seq.last_logits.clear();
      seq.sampled++;
      seq.tokens.push_back(impl_->output.tokens[i]);
      out.push_back(
          SampledToken{sampled_ids[i], impl_->output.tokens[i], impl_->output.logprobs[i], {}});
      continue;
    }
    const auto row = impl_->output.logits.begin() + i * vocab;
    std::vector<float> logits(row, row + vocab);
    if (impl_->options.keep_last_logits) {
      seq.last_logits = logits;
    } else {
      seq.last_logits.clear();
    }
    SampleResult r = SampleToken(logits, seq.params, seq.tokens, seq.sampled++);
    seq.tokens.push_back(r.token);
    out.push_back(SampledToken{sampled_ids[i], r.token, r.logprob, std::move(r.top)});
  }
  return out;
}

}  // namespace kbitd::runtime
