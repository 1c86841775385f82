// Shared pieces of the blockwise CPU kernels (4-bit, 8-bit): dtype dispatch, argument checks and
// the per-block absmax reduction of bnb's kQuantizeBlockwise. Internal to quant/.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "quant/encode.h"
#include "quant/half_convert.h"

namespace kbitd::quant::internal {

// Element access for the three floating dtypes, resolved at compile time.
template <ScalarType kType>
struct FloatElem {
  static float Load(const void* data, int64_t i) {
    if constexpr (kType == ScalarType::kFloat32) {
      return static_cast<const float*>(data)[i];
    } else if constexpr (kType == ScalarType::kFloat16) {
      return HalfToFloatInline(static_cast<const uint16_t*>(data)[i]);
    } else {
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[i]);
    }
  }
  // The element type as stored: float for F32, the 16-bit pattern otherwise.
  using Bits = std::conditional_t<kType == ScalarType::kFloat32, float, uint16_t>;
  static Bits Convert(float value) {
    if constexpr (kType == ScalarType::kFloat32) {
      return value;
    } else if constexpr (kType == ScalarType::kFloat16) {
      return FloatToHalfInline(value);
    } else {
      return FloatToBFloat16(value);
    }
  }
  static void Store(void* data, int64_t i, float value) {
    if constexpr (kType == ScalarType::kFloat32) {
      static_cast<float*>(data)[i] = value;
    } else if constexpr (kType == ScalarType::kFloat16) {
      static_cast<uint16_t*>(data)[i] = FloatToHalfInline(value);
    } else {
      static_cast<uint16_t*>(data)[i] = FloatToBFloat16(value);
    }
  }
};

inline bool IsQuantizableFloat(ScalarType type) {
  return type == ScalarType::kFloat32 || type == ScalarType::kFloat16 ||
         type == ScalarType::kBFloat16;
}

// Calls fn(std::integral_constant<ScalarType, T>) for T in {F32, F16, BF16}; the caller validated
// the type.
template <typename Fn>
auto DispatchFloat(ScalarType type, Fn&& fn) {
  switch (type) {
    case ScalarType::kFloat16:
      return fn(std::integral_constant<ScalarType, ScalarType::kFloat16>{});
    case ScalarType::kBFloat16:
      return fn(std::integral_constant<ScalarType, ScalarType::kBFloat16>{});
    default:
      return fn(std::integral_constant<ScalarType, ScalarType::kFloat32>{});
  }
}

inline absl::Status CheckFloatType(ScalarType type, const char* what) {
  if (IsQuantizableFloat(type)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " dtype must be float32, float16 or bfloat16, got ",
                   std::string(TorchDtypeName(type))));
}

inline absl::Status CheckCount(int64_t n, const char* what) {
  if (n >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be >= 0, got ", n));
}

inline absl::Status CheckPointer(const void* p, int64_t n, const char* what) {
  if (p != nullptr || n == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " is null"));
}

inline constexpr int64_t kMaxBlocksize = 4096;

// Loads elements [begin, end) as float into `values` and returns their max |x|, reduced as bnb's
// kQuantizeBlockwise does with fmaxf: NaN ignored, Inf kept, starting from -FLT_MAX; a partial
// last block also reduces the zero padding the kernel loads. So an all-NaN block has absmax
// -FLT_MAX, or 0 when it is the partial last block (as measured with bnb 0.50.2).
template <ScalarType kType>
float LoadBlock(const void* input, int64_t begin, int64_t end, int64_t blocksize, float* values) {
  const int64_t count = end - begin;
  for (int64_t i = 0; i < count; ++i) values[i] = FloatElem<kType>::Load(input, begin + i);
  // On the bit patterns of |x|, integer order is float order and NaNs lie above Inf, so this
  // integer form (which vectorizes) equals the fmaxf reduction.
  int32_t max_bits = -1;  // stays -1 when every element is NaN (bits <= 0x7F800000 fit int32)
  for (int64_t i = 0; i < count; ++i) {
    const int32_t bits = static_cast<int32_t>(FloatBits(values[i]) & 0x7FFFFFFFu);
    const int32_t candidate = bits <= 0x7F800000 ? bits : -1;
    max_bits = candidate > max_bits ? candidate : max_bits;
  }
  if (max_bits >= 0) return FloatFromBits(static_cast<uint32_t>(max_bits));
  return count < blocksize ? 0.0f : -FLT_MAX;
}

// The quantize loop shared by the 4-bit and 8-bit kernels: per block, loads the values, stores
// absmax and calls fn(begin, values, count, inv) with inv = ReciprocalAbsmax(absmax).
template <ScalarType kIn, typename Fn>
void ForEachQuantBlock(const void* input, int64_t n, int64_t blocksize, float* absmax, Fn&& fn) {
  float values[kMaxBlocksize];
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = begin + blocksize < n ? begin + blocksize : n;
    absmax[b] = LoadBlock<kIn>(input, begin, end, blocksize, values);
    fn(begin, values, end - begin, ReciprocalAbsmax(absmax[b]));
  }
}

}  // namespace kbitd::quant::internal
