// Turns one row of logits into a token: repetition penalty (HF RepetitionPenaltyLogitsProcessor),
// temperature, top-k, top-p, min-p (the order of transformers' generate warpers), then a draw
// from a counter-based RNG keyed by (seed, step), so a sequence's tokens depend only on its seed,
// its tokens and its logits, never on what else is batched with it. Stop conditions are the
// server's job. Stateless and thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/sampling_params.h"

namespace kbitd::runtime {

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): returns a
// uniform double in [0, 1) for (seed, counter).
double PhiloxUniform(uint64_t seed, uint64_t counter);

struct SampleResult {
  int32_t token = 0;
  float logprob = 0;              // log-softmax of the chosen token after penalty and temperature
  std::vector<TokenLogprob> top;  // params.top_logprobs best of that distribution, best first
};

// Greedy choice over one row of `vocab` logits: the first index of the largest value (NaN never
// wins; an all-NaN row gives 0) and its log-softmax, logit − (f32(log Σ exp(f64(v − max))) + max).
// SampleToken's greedy path and every backend's GreedySample compute exactly this.
struct GreedyChoice {
  int32_t token = 0;
  float logprob = 0;
};
GreedyChoice PickGreedy(const float* logits, int64_t vocab);

// `history` is every token of the sequence so far (prompt and sampled) for the repetition
// penalty; `step` the index of the token being sampled (the RNG counter). `logits` is modified.
SampleResult SampleToken(std::vector<float>& logits, const SamplingParams& params,
                         const std::vector<int32_t>& history, uint64_t step);

}  // namespace kbitd::runtime
