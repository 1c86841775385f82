// Shared by the GPTQ round-to-nearest and GPTQ-algorithm quantizers (quant/gptq_quantize.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/status/statusor.h"
#include "quant/gptq_quantize.h"

namespace kbitd::quant::internal {

// One group's quantizer for one output row.
struct GroupParams {
  uint16_t scale_half = 0;
  float scale = 0;  // the fp16 scale as float
  int zero = 0;
  int maxq = 0;
  // clamp(round(w / scale) + zero) in double, round half to even (NumPy's np.round, as the
  // fixture generator does).
  int Code(double w) const {
    return static_cast<int>(std::clamp(std::nearbyint(w / scale + zero), 0.0, double(maxq)));
  }
  double Dequant(int code) const { return double(scale) * (code - zero); }
};

// Scale and zero of `count` values at column_values[i * stride].
absl::StatusOr<GroupParams> FindGroupParams(const float* column_values, int64_t count,
                                            int64_t stride, int bits, bool sym);

// Codes/zeros/scales zeroed, g_idx = k / group_size.
GptqQuantized EmptyQuantized(int64_t out_features, int64_t in_features,
                             const GptqQuantizeOptions& options);

}  // namespace kbitd::quant::internal
