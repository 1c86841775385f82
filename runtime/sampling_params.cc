#include "runtime/sampling_params.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace kbitd::runtime {
namespace {

absl::Status CheckRange(const char* field, float value, float lo, bool lo_open, float hi) {
  bool ok = std::isfinite(value) && (lo_open ? value > lo : value >= lo) && value <= hi;
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " = ", value, " must be in ",
                                                 lo_open ? "(" : "[", lo, ", ", hi, "]"));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (auto s = CheckRange("temperature", params.temperature, 0.0f, false, 100.0f); !s.ok())
    return s;
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k = ", params.top_k, " must be >= 0 (0 = off)"));
  }
  if (auto s = CheckRange("top_p", params.top_p, 0.0f, true, 1.0f); !s.ok()) return s;
  if (auto s = CheckRange("min_p", params.min_p, 0.0f, false, 1.0f); !s.ok()) return s;
  if (auto s = CheckRange("repetition_penalty", params.repetition_penalty, 0.0f, true, 100.0f);
      !s.ok()) {
    return s;
  }
  if (params.top_logprobs < 0 || params.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.top_logprobs = ", params.top_logprobs,
                                                   " must be in [0, ", kMaxTopLogprobs, "]"));
  }
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
