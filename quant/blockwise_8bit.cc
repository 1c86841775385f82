#include "quant/blockwise_8bit.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_internal.h"
#include "quant/codebooks.h"
#include "quant/dynamic8bit_lookup.h"
#include "quant/encode.h"

namespace kbitd::quant {
namespace {

using internal::FloatElem;

template <ScalarType kIn>
void QuantizeImpl(const float* code256, const void* input, int64_t n, int64_t blocksize,
                  uint8_t* codes, float* absmax) {
  // bnb's default map has a precomputed exact lookup (built once, when first needed for a large
  // input); any other map uses the search itself.
  const internal::Dynamic8bitLookup* fast = nullptr;
  if (n >= 4096 && std::memcmp(code256, DynamicMap().data(), 256 * sizeof(float)) == 0) {
    fast = internal::Dynamic8bitLookup::ForDefaultMap();
  }
  internal::ForEachQuantBlock<kIn>(
      input, n, blocksize, absmax,
      [&](int64_t begin, const float* values, int64_t count, float inv) {
        if (fast != nullptr) {
          for (int64_t i = 0; i < count; ++i) codes[begin + i] = fast->Encode(values[i] * inv);
        } else {
          for (int64_t i = 0; i < count; ++i) {
            codes[begin + i] = EncodeDynamic8bit(code256, values[i] * inv);
          }
        }
      });
}

// Large blocks convert the 256 possible outputs once; small blocks convert each element.
template <ScalarType kOut>
void DequantizeImpl(const float* code256, const uint8_t* codes, const float* absmax, int64_t n,
                    int64_t blocksize, void* output) {
  using Out = FloatElem<kOut>;
  using Bits = typename Out::Bits;
  Bits* out = static_cast<Bits*>(output);
  const int64_t nblocks = NumBlocks(n, blocksize);
  Bits table[256];
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min(begin + blocksize, n);
    const float scale = absmax[b];
    if (end - begin >= 1024) {
      for (int c = 0; c < 256; ++c) table[c] = Out::Convert(code256[c] * scale);
      for (int64_t k = begin; k < end; ++k) out[k] = table[codes[k]];
    } else {
      for (int64_t k = begin; k < end; ++k) out[k] = Out::Convert(code256[codes[k]] * scale);
    }
  }
}

absl::Status CheckArgs(const float* code256, int64_t n, int64_t blocksize, ScalarType type,
                       const char* what) {
  KBITD_RETURN_IF_ERROR(internal::CheckCount(n, "8-bit element count n"));
  KBITD_RETURN_IF_ERROR(Validate8bitBlocksize(blocksize));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(code256, 1, "8-bit code (256 entries)"));
  return internal::CheckFloatType(type, what);
}

}  // namespace

absl::Status Validate8bitBlocksize(int64_t blocksize) {
  if (blocksize >= 64 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("8-bit blocksize must be a power of two in [64, 4096], got ", blocksize));
}

absl::Status QuantizeBlockwise8bit(const float* code256, const void* input, ScalarType input_type,
                                   int64_t n, int64_t blocksize, uint8_t* codes, float* absmax) {
  KBITD_RETURN_IF_ERROR(CheckArgs(code256, n, blocksize, input_type, "8-bit quantization input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(input, n, "8-bit quantization input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(codes, n, "8-bit codes output"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(absmax, n, "8-bit absmax output"));
  internal::DispatchFloat(input_type, [&](auto in) {
    QuantizeImpl<decltype(in)::value>(code256, input, n, blocksize, codes, absmax);
  });
  return absl::OkStatus();
}

absl::Status DequantizeBlockwise8bit(const float* code256, const uint8_t* codes,
                                     const float* absmax, int64_t n, int64_t blocksize,
                                     ScalarType output_type, void* output) {
  KBITD_RETURN_IF_ERROR(
      CheckArgs(code256, n, blocksize, output_type, "8-bit dequantization output"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(codes, n, "8-bit codes input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(absmax, n, "8-bit absmax input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(output, n, "8-bit dequantization output"));
  internal::DispatchFloat(output_type, [&](auto out) {
    DequantizeImpl<decltype(out)::value>(code256, codes, absmax, n, blocksize, output);
  });
  return absl::OkStatus();
}

}  // namespace kbitd::quant
