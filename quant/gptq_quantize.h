// Writing GPTQ linears (the inverse of quant/gptq.h): round-to-nearest and the GPTQ algorithm
// (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", arXiv:2210.17323), and the packers that lay the codes and
// zero points out exactly as GptqField / GptqZero read them.
// The algorithm was learned from, not copied from, AutoGPTQ auto_gptq/quantization/gptq.py and
// GPTQModel gptqmodel/quantization/gptq.py (`fasterquant`) and quantizer.py (`find_params`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/gptq.h"
#include "quant/quant_state.h"

namespace kbitd::quant {

struct GptqQuantizeOptions {
  int bits = 4;
  int64_t group_size = 128;    // -1: one group of all input rows; otherwise must divide in_features
  bool sym = true;             // zero point fixed at 2^(bits-1) (GPTQModel's default)
  bool act_order = false;      // GPTQ only: quantize columns by descending diag(H) (desc_act)
  double damp_percent = 0.01;  // GPTQ only: H += damp_percent * mean(diag(H)) * I
  int64_t block_size = 128;    // GPTQ only: columns per lazy-batch block (paper §4, step 2)
};

// A quantized linear, unpacked: w[n][k] = scale[g][n] * (codes[k * out + n] - zero[g][n]),
// g = g_idx[k] (quant/gptq.h).
struct GptqQuantized {
  int bits = 4;
  int64_t in_features = 0, out_features = 0, groups = 0;
  std::vector<uint8_t> codes;    // [in, out]
  std::vector<int32_t> zeros;    // [groups, out]
  std::vector<uint16_t> scales;  // fp16 bits [groups, out]
  std::vector<int32_t> g_idx;    // [in]
};

// Checks bits, group size (dividing in_features), and the shape the format can hold.
absl::Status ValidateGptqQuantize(int64_t out_features, int64_t in_features,
                                  const GptqQuantizeOptions& options);

// Round-to-nearest of weight [out, in] (row-major, fp32): per group and output row, min/max (asym)
// or absmax (sym) scale rounded to fp16, zero = round(-min / scale), code = clamp(round(w / scale)
// + zero). Ignores act_order (no Hessian to order by). Non-finite weights are INVALID_ARGUMENT.
absl::StatusOr<GptqQuantized> QuantizeGptqRtn(const float* weight, int64_t out_features,
                                              int64_t in_features,
                                              const GptqQuantizeOptions& options);

// GPTQ of weight [out, in] given hessian [in, in] = 2 X^T X summed over calibration rows X
// [rows, in] (the linear's inputs). Columns with a zero diagonal (inputs never seen) are zeroed as
// the paper's implementation does. INVALID_ARGUMENT when H + damping is not positive definite.
absl::StatusOr<GptqQuantized> QuantizeGptq(const float* weight, int64_t out_features,
                                           int64_t in_features, std::vector<double> hessian,
                                           const GptqQuantizeOptions& options);

// Packs codes [in, out] into qweight [in * bits / 32, out]: the inverse of GptqField(column, out,
// k, bits). in a multiple of 32.
std::vector<int32_t> PackGptqQweight(const uint8_t* codes, int64_t in_features,
                                     int64_t out_features, int bits);
// Packs zero points [groups, out] into qzeros [groups, out * bits / 32] in `format` (v1 stores
// zero - 1 modulo 2^bits): the inverse of GptqZero.
std::vector<int32_t> PackGptqZeros(const int32_t* zeros, int64_t groups, int64_t out_features,
                                   int bits, GptqZeroFormat format);

// The state-dict tensors GPTQModel writes for module `prefix`: qweight, qzeros (int32), scales
// (fp16), g_idx (int32).
std::vector<NamedTensor> GptqStateDict(const GptqQuantized& q, const std::string& prefix,
                                       GptqZeroFormat format);

}  // namespace kbitd::quant
