// Per-request sampling parameters (OpenAI/HF names and semantics) and their validation. The sampler
// that applies them lives in runtime/sampler.h.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kbitd::runtime {

// Defaults disable each transform, so a default SamplingParams samples from the plain softmax.
struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax; ties go to the lowest token id)
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off (HF RepetitionPenaltyLogitsProcessor semantics)
  uint64_t seed = 0;                // per request; same seed + same prompt = same tokens
  int32_t top_logprobs = 0;         // number of alternatives to return (0..kMaxTopLogprobs)
};

inline constexpr int32_t kMaxTopLogprobs = 20;

// INVALID_ARGUMENT naming the field and its allowed range: temperature in [0, 100], top_k >= 0,
// top_p in (0, 1], min_p in [0, 1], repetition_penalty in (0, 100], top_logprobs in [0, 20];
// NaN/inf rejected everywhere.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct TokenLogprob {
  int32_t token;
  float logprob;
};

}  // namespace kbitd::runtime
