#include "runtime/quantize_op_checks.h"

#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/double_quant.h"
#include "runtime/model_weights.h"

namespace kbitd::runtime {
namespace {

absl::Status Expect(const char* op, const char* what, const Tensor& t, const Device& device,
                    std::initializer_list<ScalarType> dtypes, int64_t count) {
  bool dtype_ok = false;
  for (ScalarType d : dtypes) dtype_ok = dtype_ok || t.dtype == d;
  if (!t.defined() || !(t.device == device) || !dtype_ok || t.numel() != count) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " is ", DescribeTensor(t),
                                                   ", expected ", count, " elements on ",
                                                   device.ToString()));
  }
  return absl::OkStatus();
}

constexpr std::initializer_list<ScalarType> kFloats = {ScalarType::kFloat32, ScalarType::kFloat16,
                                                       ScalarType::kBFloat16};

}  // namespace

absl::Status CheckQuantize4bitArgs(const Device& device, const Tensor& dense, int64_t blocksize,
                                   const Tensor& packed, const Tensor& absmax) {
  const char* op = "Quantize4bit";
  const int64_t n = dense.numel();
  KBITD_RETURN_IF_ERROR(Expect(op, "dense", dense, device, kFloats, n));
  if (n <= 0 || blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", n, " elements in blocks of ",
                                                   blocksize, " (a power of two in 32..4096)"));
  }
  KBITD_RETURN_IF_ERROR(
      Expect(op, "packed", packed, device, {ScalarType::kUInt8}, quant::Packed4bitBytes(n)));
  return Expect(op, "absmax", absmax, device, {ScalarType::kFloat32},
                quant::NumBlocks(n, blocksize));
}

absl::Status CheckDoubleQuantizeArgs(const Device& device, const Tensor& absmax,
                                     const Tensor& codes, const Tensor& nested_absmax,
                                     const Tensor& offset) {
  const char* op = "DoubleQuantize";
  const int64_t blocks = absmax.numel();
  KBITD_RETURN_IF_ERROR(Expect(op, "absmax", absmax, device, {ScalarType::kFloat32}, blocks));
  if (blocks <= 0) return absl::InvalidArgumentError(absl::StrCat(op, ": no absmax"));
  KBITD_RETURN_IF_ERROR(Expect(op, "codes", codes, device, {ScalarType::kUInt8}, blocks));
  KBITD_RETURN_IF_ERROR(Expect(op, "nested_absmax", nested_absmax, device, {ScalarType::kFloat32},
                               quant::NumBlocks(blocks, quant::kNestedBlocksize)));
  return Expect(op, "offset", offset, device, {ScalarType::kFloat32}, 1);
}

absl::Status CheckRowwiseInt8Args(const Device& device, const Tensor& dense, const Tensor& cb,
                                  const Tensor& scb) {
  const char* op = "QuantizeRowwiseInt8";
  if (dense.rank != 2 || dense.numel() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": dense is ", DescribeTensor(dense), ", expected a matrix"));
  }
  KBITD_RETURN_IF_ERROR(Expect(op, "dense", dense, device, kFloats, dense.numel()));
  KBITD_RETURN_IF_ERROR(Expect(op, "cb", cb, device, {ScalarType::kInt8}, dense.numel()));
  return Expect(op, "scb", scb, device, {ScalarType::kFloat32}, dense.dim(0));
}

}  // namespace kbitd::runtime
