#include "runtime/model_weights.h"

namespace kbitd::runtime {

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
    case quant::QuantType::kInt8Blockwise:
      break;
  }
  return 0;
}

}  // namespace kbitd::runtime
