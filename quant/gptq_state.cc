// GPTQ linears as QuantState: reading their state-dict tensors (quant_state.h GptqFromStateDict)
// and dequantizing them (DequantizeState).
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/gptq.h"
#include "quant/quant_state.h"
#include "quant/state_dict_internal.h"

namespace kbitd::quant {
namespace {

using internal::Expect;
using internal::ShapeString;
using internal::Values;

absl::Status Invalid(const std::string& tensor, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor, ": ", what));
}

}  // namespace

GptqView GptqTensors::View(int64_t out_features, int64_t in_features) const {
  GptqView view;
  view.bits = params.bits;
  view.zero_format = params.zero_format;
  view.in_features = in_features;
  view.out_features = out_features;
  view.groups = groups;
  view.qweight = qweight.data();
  view.qzeros = qzeros.data();
  view.scales = scales.data();
  view.g_idx = g_idx.data();
  return view;
}

absl::StatusOr<QuantState> GptqFromStateDict(const std::vector<NamedTensor>& tensors,
                                             std::string_view prefix, const GptqParams& params) {
  const std::string p(prefix);
  const NamedTensor* qweight = nullptr;
  const NamedTensor* qzeros = nullptr;
  const NamedTensor* scales = nullptr;
  const NamedTensor* g_idx = nullptr;
  for (const NamedTensor& t : tensors) {
    if (t.name == p + ".qweight") qweight = &t;
    if (t.name == p + ".qzeros") qzeros = &t;
    if (t.name == p + ".scales") scales = &t;
    if (t.name == p + ".g_idx") g_idx = &t;
  }
  for (const auto& [tensor, suffix] : {std::pair{qweight, ".qweight"},
                                       {qzeros, ".qzeros"},
                                       {scales, ".scales"},
                                       {g_idx, ".g_idx"}}) {
    if (tensor == nullptr) return absl::NotFoundError(absl::StrCat("missing tensor ", p, suffix));
  }
  KBITD_RETURN_IF_ERROR(ValidateGptqBits(params.bits));
  KBITD_RETURN_IF_ERROR(ValidateGptqGroupSize(params.group_size));
  const int bits = params.bits;
  // g_idx gives in_features and qweight's columns out_features; every other size follows.
  if (g_idx->dtype != ScalarType::kInt32 || g_idx->shape.size() != 1) {
    return Invalid(g_idx->name, absl::StrCat("expected I32 [in_features], got ",
                                             std::string(SafetensorsDtypeName(g_idx->dtype)), " ",
                                             ShapeString(g_idx->shape)));
  }
  if (qweight->shape.size() != 2) {
    return Invalid(qweight->name, absl::StrCat("expected I32 [in_features * bits / 32, "
                                               "out_features], got shape ",
                                               ShapeString(qweight->shape)));
  }
  const int64_t in = g_idx->shape[0], out = qweight->shape[1];
  const int64_t groups = GptqGroups(in, params.group_size);
  if (absl::Status s = ValidateGptqShape(bits, in, out, groups); !s.ok()) {
    return Invalid(in % 32 != 0 || in <= 0 ? g_idx->name : qweight->name, std::string(s.message()));
  }
  KBITD_RETURN_IF_ERROR(Expect(*g_idx, ScalarType::kInt32, {in}));
  KBITD_RETURN_IF_ERROR(Expect(*qweight, ScalarType::kInt32, {GptqWords(in, bits), out}));
  KBITD_RETURN_IF_ERROR(Expect(*scales, ScalarType::kFloat16, {groups, out}));
  KBITD_RETURN_IF_ERROR(Expect(*qzeros, ScalarType::kInt32, {groups, GptqWords(out, bits)}));

  QuantState state;
  state.type = QuantType::kGptq;
  state.shape = {out, in};
  state.dtype = ScalarType::kFloat16;  // the dtype of the scales and of the model GPTQ started from
  state.quant_storage = ScalarType::kInt32;
  GptqTensors& t = state.gptq.emplace();
  t.params = params;
  t.groups = groups;
  t.qweight = Values<int32_t>(*qweight);
  t.qzeros = Values<int32_t>(*qzeros);
  t.scales = Values<uint16_t>(*scales);
  t.g_idx = Values<int32_t>(*g_idx);
  if (absl::Status s = ValidateGptq(t.View(out, in)); !s.ok()) {
    return Invalid(g_idx->name, std::string(s.message()));
  }
  return state;
}

namespace internal {

absl::Status DequantizeGptqState(const QuantState& state, ScalarType output_type, void* output) {
  if (!state.gptq.has_value() || state.shape.size() != 2) {
    return absl::InvalidArgumentError("GPTQ state without its tensors");
  }
  const int64_t out = state.shape[0], in = state.shape[1];
  const GptqTensors& t = *state.gptq;
  const GptqView view = t.View(out, in);
  KBITD_RETURN_IF_ERROR(ValidateGptqShape(t.params.bits, in, out, t.groups));
  if (static_cast<int64_t>(t.qweight.size()) != GptqWords(in, t.params.bits) * out ||
      static_cast<int64_t>(t.qzeros.size()) != t.groups * GptqWords(out, t.params.bits) ||
      static_cast<int64_t>(t.scales.size()) != t.groups * out ||
      static_cast<int64_t>(t.g_idx.size()) != in) {
    return absl::InvalidArgumentError("GPTQ state has inconsistent sizes");
  }
  KBITD_RETURN_IF_ERROR(ValidateGptq(view));
  if (output_type == ScalarType::kFloat32) {
    DequantizeGptqRows(view, 0, out, static_cast<float*>(output));
    return absl::OkStatus();
  }
  if (output_type != ScalarType::kFloat16 && output_type != ScalarType::kBFloat16) {
    return absl::InvalidArgumentError("GPTQ dequantizes to float32, float16 or bfloat16");
  }
  std::vector<float> row(in);  // one output feature at a time, then one RNE rounding
  for (int64_t n = 0; n < out; ++n) {
    DequantizeGptqRows(view, n, 1, row.data());
    for (int64_t k = 0; k < in; ++k) StoreFromFloat(output, output_type, n * in + k, row[k]);
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace kbitd::quant
