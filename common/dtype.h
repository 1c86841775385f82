// Scalar element types shared by every layer, with their safetensors and torch names, and exact
// (round-to-nearest-even) conversions between float32 and the 16-bit float formats.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace kbitd {

enum class ScalarType : uint8_t {
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat64,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kBool,
};

// Bytes per element.
size_t ScalarTypeSize(ScalarType type);
// safetensors dtype string ("F32", "F16", "BF16", "U8", "I8", ...).
std::string_view SafetensorsDtypeName(ScalarType type);
absl::StatusOr<ScalarType> ScalarTypeFromSafetensorsName(std::string_view name);
// torch dtype name as transformers/bitsandbytes write it ("float32", "bfloat16", "uint8", ...).
std::string_view TorchDtypeName(ScalarType type);
absl::StatusOr<ScalarType> ScalarTypeFromTorchName(std::string_view name);
bool IsFloatingPoint(ScalarType type);

inline uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float FloatFromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline float BFloat16ToFloat(uint16_t bits) {
  return FloatFromBits(static_cast<uint32_t>(bits) << 16);
}

// Round-to-nearest-even, NaN kept quiet (as torch and CUDA's __float2bfloat16_rn do).
inline uint16_t FloatToBFloat16(float value) {
  uint32_t bits = FloatBits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float HalfToFloat(uint16_t bits);
// Round-to-nearest-even with overflow to infinity, subnormals kept (IEEE binary16).
uint16_t FloatToHalf(float value);

// Reads element `index` of a float16/bfloat16/float32 buffer as float32.
inline float LoadAsFloat(const void* data, ScalarType type, size_t index) {
  switch (type) {
    case ScalarType::kFloat32:
      return static_cast<const float*>(data)[index];
    case ScalarType::kFloat16:
      return HalfToFloat(static_cast<const uint16_t*>(data)[index]);
    case ScalarType::kBFloat16:
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[index]);
    default:
      return 0.0f;
  }
}

// Writes float32 `value` rounded (RNE) to element `index` of a float16/bfloat16/float32 buffer.
inline void StoreFromFloat(void* data, ScalarType type, size_t index, float value) {
  switch (type) {
    case ScalarType::kFloat32:
      static_cast<float*>(data)[index] = value;
      break;
    case ScalarType::kFloat16:
      static_cast<uint16_t*>(data)[index] = FloatToHalf(value);
      break;
    case ScalarType::kBFloat16:
      static_cast<uint16_t*>(data)[index] = FloatToBFloat16(value);
      break;
    default:
      break;
  }
}

}  // namespace kbitd
