#include "runtime/model_weights.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

bool IsFloat(ScalarType dtype) {
  return dtype == ScalarType::kFloat32 || dtype == ScalarType::kFloat16 ||
         dtype == ScalarType::kBFloat16;
}

// One tensor of a linear weight: `count` elements of `dtype` (the format's layout).
absl::Status CheckPart(const std::string& op, const char* what, const Tensor& t, ScalarType dtype,
                       int64_t count) {
  if (!t.defined() || t.dtype != dtype || t.numel() != count) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " is ", DescribeTensor(t),
                                                   ", expected ", count, " ",
                                                   std::string(TorchDtypeName(dtype))));
  }
  return absl::OkStatus();
}

absl::Status CheckLinearWeightLayout(const std::string& op, const LinearWeight& w) {
  const int64_t n = w.out_features * w.in_features;
  if (w.bias.defined()) {
    KBITD_RETURN_IF_ERROR(CheckPart(op, "bias", w.bias, ScalarType::kFloat32, w.out_features));
  }
  if (w.is_dense()) {
    const Tensor& d = w.dense;
    if (!d.defined() || !IsFloat(d.dtype) || d.rank != 2 || d.dim(0) != w.out_features ||
        d.dim(1) != w.in_features) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": dense weight is ", DescribeTensor(d),
                                                     ", expected [", w.out_features, ", ",
                                                     w.in_features, "] float32/16 or bfloat16"));
    }
    return absl::OkStatus();
  }
  switch (*w.quant_type) {
    case quant::QuantType::kNf4:
    case quant::QuantType::kFp4: {
      if (w.blocksize <= 0 || (w.nested() && w.nested_blocksize <= 0)) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": blocksize ", w.blocksize,
                                                       ", nested blocksize ", w.nested_blocksize));
      }
      KBITD_RETURN_IF_ERROR(CheckPart(op, "packed", w.packed, ScalarType::kUInt8, (n + 1) / 2));
      const int64_t blocks = w.num_blocks();
      if (!w.nested()) return CheckPart(op, "absmax", w.absmax, ScalarType::kFloat32, blocks);
      KBITD_RETURN_IF_ERROR(
          CheckPart(op, "absmax_codes", w.absmax_codes, ScalarType::kUInt8, blocks));
      const int64_t groups = (blocks + w.nested_blocksize - 1) / w.nested_blocksize;
      return CheckPart(op, "nested_absmax", w.nested_absmax, ScalarType::kFloat32, groups);
    }
    case quant::QuantType::kInt8Rowwise:
      KBITD_RETURN_IF_ERROR(CheckPart(op, "cb", w.cb, ScalarType::kInt8, n));
      return CheckPart(op, "scb", w.scb, ScalarType::kFloat32, w.out_features);
    case quant::QuantType::kGptq: {
      const int bits = w.gptq.bits;
      const int64_t groups = w.gptq_groups();
      if (absl::Status s = quant::ValidateGptqShape(bits, w.in_features, w.out_features, groups);
          !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": ", s.message()));
      }
      KBITD_RETURN_IF_ERROR(CheckPart(op, "qweight", w.qweight, ScalarType::kInt32,
                                      quant::GptqWords(w.in_features, bits) * w.out_features));
      KBITD_RETURN_IF_ERROR(CheckPart(op, "qzeros", w.qzeros, ScalarType::kInt32,
                                      groups * quant::GptqWords(w.out_features, bits)));
      KBITD_RETURN_IF_ERROR(
          CheckPart(op, "scales", w.scales, ScalarType::kFloat16, groups * w.out_features));
      return CheckPart(op, "g_idx", w.g_idx, ScalarType::kInt32, w.in_features);
    }
    case quant::QuantType::kInt8Blockwise:
      break;
  }
  return absl::UnimplementedError(absl::StrCat(op, ": 8-bit blockwise weights have no matmul"));
}

}  // namespace

Device LinearWeight::device() const {
  for (const Part& part : parts()) {
    if (part.tensor->defined()) return part.tensor->device;
  }
  return Device::Cpu();
}

int64_t LinearWeight::resident_bytes() const {
  const int64_t n = out_features * in_features;
  if (is_dense()) return dense.bytes();
  switch (*quant_type) {
    case quant::QuantType::kNf4:
    case quant::QuantType::kFp4:
      return packed.bytes() + absmax.bytes() + absmax_codes.bytes() + nested_absmax.bytes();
    case quant::QuantType::kInt8Rowwise:
      return n + 4 * out_features;
    case quant::QuantType::kGptq:
      return qweight.bytes() + qzeros.bytes() + scales.bytes() + g_idx.bytes();
    case quant::QuantType::kInt8Blockwise:
      break;
  }
  return 0;
}

std::string DescribeTensor(const Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string shape = "[";
  for (int i = 0; i < t.rank; ++i) absl::StrAppend(&shape, i > 0 ? ", " : "", t.dim(i));
  return absl::StrCat(shape, "] ", std::string(TorchDtypeName(t.dtype)), " on ",
                      t.device.ToString());
}

absl::Status CheckLinearWeight(const std::string& op, const LinearWeight& w, const Device& device) {
  for (const LinearWeight::Part& part : w.parts()) {
    if (part.tensor->defined() && !(part.tensor->device == device)) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", part.name, " is ",
                                                     DescribeTensor(*part.tensor), ", not on ",
                                                     device.ToString()));
    }
  }
  return CheckLinearWeightLayout(op, w);
}

}  // namespace kbitd::runtime
