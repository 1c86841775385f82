#include "common/dtype.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace kbitd {
namespace {

struct DtypeNames {
  ScalarType type;
  size_t size;
  std::string_view safetensors;
  std::string_view torch;
  bool floating;
};

// safetensors names: https://github.com/huggingface/safetensors (Dtype enum).
constexpr DtypeNames kDtypes[] = {
    {ScalarType::kFloat32, 4, "F32", "float32", true},
    {ScalarType::kFloat16, 2, "F16", "float16", true},
    {ScalarType::kBFloat16, 2, "BF16", "bfloat16", true},
    {ScalarType::kFloat64, 8, "F64", "float64", true},
    {ScalarType::kUInt8, 1, "U8", "uint8", false},
    {ScalarType::kInt8, 1, "I8", "int8", false},
    {ScalarType::kInt16, 2, "I16", "int16", false},
    {ScalarType::kInt32, 4, "I32", "int32", false},
    {ScalarType::kInt64, 8, "I64", "int64", false},
    {ScalarType::kBool, 1, "BOOL", "bool", false},
};

const DtypeNames& Lookup(ScalarType type) {
  for (const auto& entry : kDtypes) {
    if (entry.type == type) return entry;
  }
  return kDtypes[0];
}

}  // namespace

size_t ScalarTypeSize(ScalarType type) { return Lookup(type).size; }
std::string_view SafetensorsDtypeName(ScalarType type) { return Lookup(type).safetensors; }
std::string_view TorchDtypeName(ScalarType type) { return Lookup(type).torch; }
bool IsFloatingPoint(ScalarType type) { return Lookup(type).floating; }

absl::StatusOr<ScalarType> ScalarTypeFromSafetensorsName(std::string_view name) {
  for (const auto& entry : kDtypes) {
    if (entry.safetensors == name) return entry.type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported safetensors dtype \"", std::string(name), "\""));
}

absl::StatusOr<ScalarType> ScalarTypeFromTorchName(std::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  for (const auto& entry : kDtypes) {
    if (entry.torch == name) return entry.type;
  }
  if (name == "half") return ScalarType::kFloat16;
  if (name == "float") return ScalarType::kFloat32;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", std::string(name), "\""));
}

float HalfToFloat(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1Fu;
  uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) return FloatFromBits(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return FloatFromBits(sign);
    // Subnormal: value = mantissa * 2^-24, exact in float32.
    float value = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -value : value;
  }
  return FloatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t FloatToHalf(float value) {
  uint32_t bits = FloatBits(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (abs_bits >= 0x47800000u) {
    // >= 65536 overflows; values in [65520, 65536) also round up to infinity.
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (abs_bits >= 0x38800000u) {  // normal half range (>= 2^-14)
    uint32_t mantissa = abs_bits & 0x7FFFFFu;
    uint32_t exponent = (abs_bits >> 23) - 112u;
    uint32_t half = (exponent << 10) | (mantissa >> 13);
    uint32_t remainder = mantissa & 0x1FFFu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);  // carry into exponent/infinity is correct
  }
  // Subnormal or zero: scale so that the half subnormal unit (2^-24) becomes 1, round RNE.
  float magnitude = FloatFromBits(abs_bits);
  float scaled = magnitude * 16777216.0f;  // exact (power of two)
  float rounded = std::nearbyint(scaled);  // default rounding mode is to-nearest-even
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded));
}

}  // namespace kbitd
