// GPTQ packed k-bit weights (bits 2, 3, 4, 8): the layout GPTQModel, AutoGPTQ and optimum write,
// transformers reads with quantization_config.quant_method "gptq" and bitorch-engine's MPQLinear
// uses. For a linear of in_features x out_features in `groups` groups of input rows:
//   qweight int32 [in * bits / 32, out]: column n holds the codes of w[0..in)[n] as a little-endian
//           bit stream along the input dimension (code k at bits [k * bits, (k + 1) * bits) of the
//           column's words), so for 3 bits 32 codes fill 3 words and codes 10 and 21 of each 32
//           straddle two words;
//   qzeros  int32 [groups, out * bits / 32]: the zero points of each group, a bit stream along the
//           output dimension; checkpoint_format "gptq" (v1) stores zero - 1 in each field,
//           "gptq_v2" the zero itself;
//   scales  fp16 [groups, out];
//   g_idx   int32 [in]: the group of each input row (k / group_size, a permutation of it with
//           act order / desc_act; the last group may be partial).
// w[n][k] = scale[g][n] * (q[k][n] - zero[g][n]), g = g_idx[k], in fp32: the integer difference and
// the fp16 scale are exact in fp32 and so is their product (at most 11 + 9 significant bits).
// Layout (learned from, not copied): GPTQModel gptqmodel/nn_modules/qlinear/__init__.py
// (PackableQuantLinear.pack_block, dequantize_weight) and gptqmodel/utils/model_dequant.py
// (convert_gptq_file, _correct_gptq_v1_qzeros); AutoGPTQ
// auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py (pack: the 3-bit 10 | 1 | 10 | 1 | 10 words).
// No I/O: quant/quant_state.h reads the tensors of a state dict into a QuantState.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kbitd::quant {

// How qzeros stores a zero point: checkpoint_format "gptq" (v1) stores zero - 1 per field,
// "gptq_v2" the zero itself.
enum class GptqZeroFormat : uint8_t { kV1, kV2 };
// "gptq" / "gptq_v2" (quantization_config.checkpoint_format); INVALID_ARGUMENT for others.
absl::StatusOr<GptqZeroFormat> GptqZeroFormatFromName(std::string_view checkpoint_format);
std::string_view GptqZeroFormatName(GptqZeroFormat format);

// What the config says about every GPTQ linear of a checkpoint (sym and desc_act change nothing in
// dequantization: the zeros and g_idx carry them).
struct GptqParams {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group of all input rows
  GptqZeroFormat zero_format = GptqZeroFormat::kV1;
};

// 2, 3, 4 or 8; INVALID_ARGUMENT otherwise.
absl::Status ValidateGptqBits(int bits);
// Group size > 0 or -1; INVALID_ARGUMENT otherwise.
absl::Status ValidateGptqGroupSize(int64_t group_size);
// ceil(in / group_size), 1 for group_size -1: the rows of scales and qzeros.
int64_t GptqGroups(int64_t in_features, int64_t group_size);
// int32 words holding `count` codes of `bits` bits (count * bits a multiple of 32).
inline int64_t GptqWords(int64_t count, int bits) { return count * bits / 32; }

// A GPTQ linear's tensors (non-owning, host memory).
struct GptqView {
  int bits = 4;
  GptqZeroFormat zero_format = GptqZeroFormat::kV1;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t groups = 0;
  const int32_t* qweight = nullptr;  // [GptqWords(in, bits), out]
  const int32_t* qzeros = nullptr;   // [groups, GptqWords(out, bits)]
  const uint16_t* scales = nullptr;  // fp16 bits [groups, out]
  const int32_t* g_idx = nullptr;    // [in]
};

// Sizes the format can hold: bits 2/3/4/8, in_features a positive multiple of 32 (the packers
// write 32 rows at a time), out_features * bits a positive multiple of 32, groups >= 1. The
// messages name the dimension or value at fault.
absl::Status ValidateGptqShape(int bits, int64_t in_features, int64_t out_features, int64_t groups);
// ValidateGptqShape and every g_idx in [0, groups): INVALID_ARGUMENT naming the first row outside.
absl::Status ValidateGptq(const GptqView& view);

// Code k (0 .. 2^bits - 1) of a bit stream of `bits`-bit fields whose word i is words[i * stride].
inline uint32_t GptqField(const int32_t* words, int64_t stride, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t word = bit / 32;
  const int offset = static_cast<int>(bit % 32);
  uint64_t value = static_cast<uint32_t>(words[word * stride]) >> offset;
  if (offset + bits > 32) {
    value |= static_cast<uint64_t>(static_cast<uint32_t>(words[(word + 1) * stride]))
             << (32 - offset);
  }
  return static_cast<uint32_t>(value) & ((1u << bits) - 1u);
}

// The zero point of output feature n in group g, the stored field plus one for v1 modulo 2^bits
// (GPTQModel's model_dequant; an all-ones v1 field is zero 0, where AutoGPTQ's old torch path read
// 2^bits). `view` passed ValidateGptq.
uint32_t GptqZero(const GptqView& view, int64_t group, int64_t n);

// Dequantizes output features [first, first + count) of a view that passed ValidateGptq into
// out[(n - first) * in_features + k] (rows of the [out, in] weight transformers' Linear holds),
// fp32 exact.
void DequantizeGptqRows(const GptqView& view, int64_t first, int64_t count, float* out);

}  // namespace kbitd::quant
