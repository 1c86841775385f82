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

namespace kbitd::quant::internal {

// Element access for the three floating dtypes, resolved at compile time.
template <ScalarType kType>
struct FloatElem {
  static float Load(const void* data, int64_t i) {
    if constexpr (kType == ScalarType::kFloat32) {
      return static_cast<const float*>(data)[i];
    } else if constexpr (kType == ScalarType::kFloat16) {
      return HalfToFloat(static_cast<const uint16_t*>(data)[i]);
    } else {
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[i]);
    }
  }
  static void Store(void* data, int64_t i, float value) {
    if constexpr (kType == ScalarType::kFloat32) {
      static_cast<float*>(data)[i] = value;
    } else if constexpr (kType == ScalarType::kFloat16) {
      static_cast<uint16_t*>(data)[i] = FloatToHalf(value);
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

// max |x| over elements [begin, end) with fmaxf (NaN ignored, Inf kept). bnb's kernel starts from
// -FLT_MAX and, in a partial last block, also reduces the zero padding it loaded; this only shows
// in blocks whose valid elements are all NaN.
template <ScalarType kType>
float BlockAbsmax(const void* input, int64_t begin, int64_t end, int64_t blocksize) {
  float amax = (end - begin < blocksize) ? 0.0f : -FLT_MAX;
  for (int64_t k = begin; k < end; ++k) amax = fmaxf(amax, fabsf(FloatElem<kType>::Load(input, k)));
  return amax;
}

// The quantize loop shared by the 4-bit and 8-bit kernels: per block, stores absmax and calls
// fn(begin, end, inv) with inv = ReciprocalAbsmax(absmax) (included by callers via encode.h).
template <ScalarType kIn, typename Fn>
void ForEachQuantBlock(const void* input, int64_t n, int64_t blocksize, float* absmax, Fn&& fn) {
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = begin + blocksize < n ? begin + blocksize : n;
    absmax[b] = BlockAbsmax<kIn>(input, begin, end, blocksize);
    fn(begin, end, ReciprocalAbsmax(absmax[b]));
  }
}

}  // namespace kbitd::quant::internal
