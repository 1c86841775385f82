// Perplexity of a loaded model on a token stream, with the protocol of the quality table in
// docs/quality.md (and of tools/train_default_model.py / tools/golden/quality_reference.py on the
// transformers side): the stream is cut into non-overlapping windows of `window` predicted tokens,
// each window starts from an empty context, and perplexity = exp(mean NLL over every predicted
// token). Used by `kbitq eval` to compare kbitd's formats with transformers + bitsandbytes.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/model.h"

namespace kbitd::runtime {

struct PerplexityOptions {
  int32_t window = 512;  // predicted tokens per window (each window reads window + 1 tokens)
  // Called after each window with tokens scored so far and the total; returning false stops the
  // evaluation with CANCELLED. May be null.
  std::function<bool(int64_t done, int64_t total)> progress;
};

struct NllSum {
  double nll = 0;             // sum of -log p(token | prefix) over the scored tokens, natural log
  int64_t tokens = 0;         // tokens scored
  double Perplexity() const;  // exp(nll / tokens); NaN when no token was scored
};

// Scores ids[1..] given their prefixes within each window. INVALID_ARGUMENT for fewer than two
// tokens, a token id outside the vocabulary, or a window < 1 or longer than the model's context
// (max_position_embeddings, capped by sliding_window).
// `backend` is the backend of the model's device (DeviceSet::BackendFor(model.device())).
absl::StatusOr<NllSum> ScoreTokens(const Model& model, Backend& backend,
                                   const std::vector<int32_t>& ids,
                                   const PerplexityOptions& options);

}  // namespace kbitd::runtime
