#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace kbitd::runtime {
namespace {

// One Philox4x32 round pair constants (Random123).
constexpr uint32_t kMul0 = 0xD2511F53, kMul1 = 0xCD9E8D57;
constexpr uint32_t kWeyl0 = 0x9E3779B9, kWeyl1 = 0xBB67AE85;

void Philox4x32(uint32_t ctr[4], uint32_t key[2]) {
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kMul0) * ctr[0];
    uint64_t p1 = static_cast<uint64_t>(kMul1) * ctr[2];
    uint32_t next[4] = {
        static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
        static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
    std::copy(next, next + 4, ctr);
    key[0] += kWeyl0;
    key[1] += kWeyl1;
  }
}

void LogSoftmax(const std::vector<float>& logits, std::vector<float>* out) {
  float max_v = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v - max_v));
  float log_sum = static_cast<float>(std::log(sum)) + max_v;
  out->resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) (*out)[i] = logits[i] - log_sum;
}

}  // namespace

GreedyChoice PickGreedy(const float* logits, int64_t vocab) {
  int64_t best = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    if (logits[i] == logits[i] && (best < 0 || logits[i] > logits[best])) best = i;
  }
  if (best < 0) return {0, std::numeric_limits<float>::quiet_NaN()};
  const float max_v = logits[best];
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max_v));
  const float log_sum = static_cast<float>(std::log(sum)) + max_v;
  return {static_cast<int32_t>(best), logits[best] - log_sum};
}

double PhiloxUniform(uint64_t seed, uint64_t counter) {
  uint32_t ctr[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0, 0};
  uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  Philox4x32(ctr, key);
  uint64_t bits = (static_cast<uint64_t>(ctr[0]) << 32 | ctr[1]) >> 11;  // 53 random bits
  return static_cast<double>(bits) * 0x1.0p-53;
}

SampleResult SampleToken(std::vector<float>& logits, const SamplingParams& params,
                         const std::vector<int32_t>& history, uint64_t step) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (params.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t token : seen) {
      if (token < 0 || token >= vocab) continue;
      float& v = logits[token];
      v = v < 0 ? v * params.repetition_penalty : v / params.repetition_penalty;
    }
  }
  const bool greedy = params.temperature == 0.0f;
  if (greedy && params.top_logprobs == 0) {
    const GreedyChoice choice = PickGreedy(logits.data(), vocab);
    return SampleResult{.token = choice.token, .logprob = choice.logprob};
  }
  if (!greedy && params.temperature != 1.0f) {
    for (float& v : logits) v /= params.temperature;
  }
  std::vector<float> logprobs;
  LogSoftmax(logits, &logprobs);

  SampleResult result;
  if (greedy) {
    result.token = PickGreedy(logits.data(), vocab).token;
  } else {
    // Candidates sorted by probability (stable on token id for ties), then filtered.
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return logprobs[a] > logprobs[b]; });
    int64_t keep = vocab;
    if (params.top_k > 0) keep = std::min<int64_t>(keep, params.top_k);
    if (params.top_p < 1.0f) {
      // Smallest prefix whose probability mass reaches top_p (HF removes cumprob <= 1 - top_p).
      double mass = 0;
      int64_t i = 0;
      for (; i < keep; ++i) {
        mass += std::exp(static_cast<double>(logprobs[order[i]]));
        if (mass >= params.top_p) break;
      }
      keep = std::min(keep, i + 1);
    }
    if (params.min_p > 0.0f) {
      const double threshold = params.min_p * std::exp(static_cast<double>(logprobs[order[0]]));
      int64_t i = 1;
      while (i < keep && std::exp(static_cast<double>(logprobs[order[i]])) >= threshold) ++i;
      keep = i;
    }
    double total = 0;
    for (int64_t i = 0; i < keep; ++i) total += std::exp(static_cast<double>(logprobs[order[i]]));
    double u = PhiloxUniform(params.seed, step) * total;
    result.token = order[keep - 1];
    double cumulative = 0;
    for (int64_t i = 0; i < keep; ++i) {
      cumulative += std::exp(static_cast<double>(logprobs[order[i]]));
      if (u < cumulative) {
        result.token = order[i];
        break;
      }
    }
  }
  result.logprob = logprobs[result.token];
  if (params.top_logprobs > 0) {
    int64_t n = std::min<int64_t>(params.top_logprobs, vocab);
    std::vector<int32_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logprobs[a] > logprobs[b] || (logprobs[a] == logprobs[b] && a < b);
    });
    for (int64_t i = 0; i < n; ++i) result.top.push_back({ids[i], logprobs[ids[i]]});
  }
  return result;
}

}  // namespace kbitd::runtime
