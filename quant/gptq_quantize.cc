// Round-to-nearest GPTQ quantization, the packers and the state dict (quant/gptq_quantize.h).
#include "quant/gptq_quantize.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/gptq_quantize_internal.h"
#include "quant/half_convert.h"

namespace kbitd::quant {
namespace internal {

absl::StatusOr<GroupParams> FindGroupParams(const float* column_values, int64_t count,
                                            int64_t stride, int bits, bool sym) {
  const int maxq = (1 << bits) - 1;
  // The range always contains 0 (GPTQModel's quantizer.find_params): zero stays representable.
  double lo = 0, hi = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double v = column_values[i * stride];
    if (!std::isfinite(v)) return absl::InvalidArgumentError("weight is NaN or infinite");
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (sym) {
    hi = std::max(-lo, hi);
    lo = -hi;
  }
  const double span = hi - lo == 0 ? 1.0 : hi - lo;
  GroupParams p;
  p.scale_half = FloatToHalfInline(static_cast<float>(span / maxq));
  // A span below fp16's smallest subnormal would round to scale 0: keep the smallest instead.
  if ((p.scale_half & 0x7fff) == 0) p.scale_half = 1;
  p.scale = HalfToFloatInline(p.scale_half);
  if (!std::isfinite(p.scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight range ", span, " overflows an fp16 scale"));
  }
  // The zero is computed against the fp16 scale so codes and dequantization agree.
  p.zero = sym ? (maxq + 1) / 2
               : static_cast<int>(
                     std::clamp(std::nearbyint(-lo / p.scale), 0.0, static_cast<double>(maxq)));
  p.maxq = maxq;
  return p;
}

}  // namespace internal

absl::Status ValidateGptqQuantize(int64_t out_features, int64_t in_features,
                                  const GptqQuantizeOptions& options) {
  KBITD_RETURN_IF_ERROR(ValidateGptqBits(options.bits));
  KBITD_RETURN_IF_ERROR(ValidateGptqGroupSize(options.group_size));
  if (options.group_size > 0 && in_features % options.group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("group size ", options.group_size,
                                                   " does not divide in_features ", in_features));
  }
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block size ", options.block_size));
  }
  return ValidateGptqShape(options.bits, in_features, out_features,
                           GptqGroups(in_features, options.group_size));
}

absl::StatusOr<GptqQuantized> QuantizeGptqRtn(const float* weight, int64_t out_features,
                                              int64_t in_features,
                                              const GptqQuantizeOptions& options) {
  KBITD_RETURN_IF_ERROR(ValidateGptqQuantize(out_features, in_features, options));
  GptqQuantized q = internal::EmptyQuantized(out_features, in_features, options);
  const int64_t size = options.group_size > 0 ? options.group_size : in_features;
  for (int64_t g = 0; g < q.groups; ++g) {
    for (int64_t n = 0; n < out_features; ++n) {
      const float* row = weight + n * in_features + g * size;
      KBITD_ASSIGN_OR_RETURN(internal::GroupParams p,
                             internal::FindGroupParams(row, size, 1, options.bits, options.sym));
      q.scales[g * out_features + n] = p.scale_half;
      q.zeros[g * out_features + n] = p.zero;
      for (int64_t i = 0; i < size; ++i) {
        q.codes[(g * size + i) * out_features + n] = static_cast<uint8_t>(p.Code(row[i]));
      }
    }
  }
  return q;
}

namespace internal {

GptqQuantized EmptyQuantized(int64_t out_features, int64_t in_features,
                             const GptqQuantizeOptions& options) {
  GptqQuantized q;
  q.bits = options.bits;
  q.in_features = in_features;
  q.out_features = out_features;
  q.groups = GptqGroups(in_features, options.group_size);
  q.codes.assign(in_features * out_features, 0);
  q.zeros.assign(q.groups * out_features, 0);
  q.scales.assign(q.groups * out_features, 0);
  q.g_idx.resize(in_features);
  const int64_t size = options.group_size > 0 ? options.group_size : in_features;
  for (int64_t k = 0; k < in_features; ++k) q.g_idx[k] = static_cast<int32_t>(k / size);
  return q;
}

}  // namespace internal

std::vector<int32_t> PackGptqQweight(const uint8_t* codes, int64_t in_features,
                                     int64_t out_features, int bits) {
  std::vector<uint32_t> words(GptqWords(in_features, bits) * out_features, 0);
  for (int64_t k = 0; k < in_features; ++k) {
    const int64_t bit = k * bits, word = bit / 32;
    const int offset = static_cast<int>(bit % 32);
    for (int64_t n = 0; n < out_features; ++n) {
      const uint64_t v = static_cast<uint64_t>(codes[k * out_features + n]) << offset;
      words[word * out_features + n] |= static_cast<uint32_t>(v);
      // A 3-bit code straddling two words puts its high bits at the start of the next one.
      if (offset + bits > 32)
        words[(word + 1) * out_features + n] |= static_cast<uint32_t>(v >> 32);
    }
  }
  std::vector<int32_t> out(words.size());
  std::memcpy(out.data(), words.data(), words.size() * sizeof(int32_t));
  return out;
}

std::vector<int32_t> PackGptqZeros(const int32_t* zeros, int64_t groups, int64_t out_features,
                                   int bits, GptqZeroFormat format) {
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t row_words = GptqWords(out_features, bits);
  std::vector<uint32_t> words(groups * row_words, 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t n = 0; n < out_features; ++n) {
      uint32_t field = static_cast<uint32_t>(zeros[g * out_features + n]);
      if (format == GptqZeroFormat::kV1) field -= 1u;  // zero 0 stores all ones (wraps)
      const uint64_t v = static_cast<uint64_t>(field & mask) << ((n * bits) % 32);
      const int64_t word = g * row_words + n * bits / 32;
      words[word] |= static_cast<uint32_t>(v);
      if ((n * bits) % 32 + bits > 32) words[word + 1] |= static_cast<uint32_t>(v >> 32);
    }
  }
  std::vector<int32_t> out(words.size());
  std::memcpy(out.data(), words.data(), words.size() * sizeof(int32_t));
  return out;
}

std::vector<NamedTensor> GptqStateDict(const GptqQuantized& q, const std::string& prefix,
                                       GptqZeroFormat format) {
  auto tensor = [&](const std::string& leaf, ScalarType dtype, std::vector<int64_t> shape,
                    const void* data, size_t bytes) {
    NamedTensor t;
    t.name = prefix + "." + leaf;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.bytes.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
    return t;
  };
  const std::vector<int32_t> qweight =
      PackGptqQweight(q.codes.data(), q.in_features, q.out_features, q.bits);
  const std::vector<int32_t> qzeros =
      PackGptqZeros(q.zeros.data(), q.groups, q.out_features, q.bits, format);
  std::vector<NamedTensor> out;
  out.push_back(tensor("qweight", ScalarType::kInt32,
                       {GptqWords(q.in_features, q.bits), q.out_features}, qweight.data(),
                       qweight.size() * 4));
  out.push_back(tensor("qzeros", ScalarType::kInt32, {q.groups, GptqWords(q.out_features, q.bits)},
                       qzeros.data(), qzeros.size() * 4));
  out.push_back(tensor("scales", ScalarType::kFloat16, {q.groups, q.out_features}, q.scales.data(),
                       q.scales.size() * 2));
  out.push_back(
      tensor("g_idx", ScalarType::kInt32, {q.in_features}, q.g_idx.data(), q.g_idx.size() * 4));
  return out;
}

}  // namespace kbitd::quant
