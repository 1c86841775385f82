#include "quant/gptq.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/half_convert.h"

namespace kbitd::quant {

absl::StatusOr<GptqZeroFormat> GptqZeroFormatFromName(std::string_view checkpoint_format) {
  if (checkpoint_format == "gptq") return GptqZeroFormat::kV1;
  if (checkpoint_format == "gptq_v2") return GptqZeroFormat::kV2;
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint_format \"", std::string(checkpoint_format), "\" is not \"gptq\" or \"gptq_v2\""));
}

std::string_view GptqZeroFormatName(GptqZeroFormat format) {
  return format == GptqZeroFormat::kV1 ? "gptq" : "gptq_v2";
}

absl::Status ValidateGptqBits(int bits) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("bits ", bits, " is not supported (GPTQ bits: 2, 3, 4 or 8)"));
}

absl::Status ValidateGptqGroupSize(int64_t group_size) {
  if (group_size > 0 || group_size == -1) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("group_size ", group_size, " must be positive or -1 (one group)"));
}

int64_t GptqGroups(int64_t in_features, int64_t group_size) {
  if (group_size <= 0) return 1;
  return (in_features + group_size - 1) / group_size;
}

absl::Status ValidateGptqShape(int bits, int64_t in_features, int64_t out_features,
                               int64_t groups) {
  KBITD_RETURN_IF_ERROR(ValidateGptqBits(bits));
  if (in_features <= 0 || in_features % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "in_features ", in_features, " is not a positive multiple of 32 (GPTQ packs 32 rows)"));
  }
  if (out_features <= 0 || out_features * bits % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("out_features ", out_features, " times ", bits,
                     " bits is not a positive multiple of 32 (qzeros packs whole int32 words)"));
  }
  if (groups < 1) return absl::InvalidArgumentError(absl::StrCat(groups, " groups"));
  return absl::OkStatus();
}

absl::Status ValidateGptq(const GptqView& view) {
  KBITD_RETURN_IF_ERROR(
      ValidateGptqShape(view.bits, view.in_features, view.out_features, view.groups));
  for (int64_t k = 0; k < view.in_features; ++k) {
    const int32_t g = view.g_idx[k];
    if (g < 0 || g >= view.groups) {
      return absl::InvalidArgumentError(
          absl::StrCat("g_idx[", k, "] = ", g, " is outside [0, ", view.groups, ")"));
    }
  }
  return absl::OkStatus();
}

uint32_t GptqZero(const GptqView& view, int64_t group, int64_t n) {
  const int64_t row_words = GptqWords(view.out_features, view.bits);
  const uint32_t field = GptqField(view.qzeros + group * row_words, 1, n, view.bits);
  if (view.zero_format == GptqZeroFormat::kV2) return field;
  return (field + 1u) & ((1u << view.bits) - 1u);
}

void DequantizeGptqRows(const GptqView& view, int64_t first, int64_t count, float* out) {
  const int bits = view.bits;
  const int64_t in = view.in_features, out_features = view.out_features;
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  // Scale and zero of each (group, column) of the block, decoded once: [group][column].
  std::vector<float> scale(view.groups * count), zero(view.groups * count);
  for (int64_t g = 0; g < view.groups; ++g) {
    for (int64_t j = 0; j < count; ++j) {
      scale[g * count + j] = internal::HalfToFloatInline(view.scales[g * out_features + first + j]);
      zero[g * count + j] = static_cast<float>(GptqZero(view, g, first + j));
    }
  }
  // 32 input rows take `bits` words of each column; read them as one bit stream.
  for (int64_t chunk = 0; chunk < in / 32; ++chunk) {
    const int32_t* words = view.qweight + chunk * bits * out_features;
    const int32_t* groups = view.g_idx + chunk * 32;
    for (int64_t j = 0; j < count; ++j) {
      const int32_t* column = words + first + j;
      float* dst = out + j * in + chunk * 32;
      uint64_t stream = 0;
      int have = 0, next = 0;
      for (int i = 0; i < 32; ++i) {
        if (have < bits) {
          stream |= static_cast<uint64_t>(static_cast<uint32_t>(column[next++ * out_features]))
                    << have;
          have += 32;
        }
        const float q = static_cast<float>(stream & mask);
        stream >>= bits;
        have -= bits;
        const int64_t at = groups[i] * count + j;
        dst[i] = scale[at] * (q - zero[at]);
      }
    }
  }
}

}  // namespace kbitd::quant
