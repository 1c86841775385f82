#include "quant/blockwise_4bit.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/codebooks.h"
#include "quant/encode.h"

namespace kbitd::quant {
namespace {

using internal::FloatElem;

template <FourBitType kType>
uint8_t Encode(float x) {
  if constexpr (kType == FourBitType::kNf4) {
    return EncodeNf4Count(x);  // == EncodeNf4 for every float, but vectorizable
  } else {
    return EncodeFp4Count(x);
  }
}

template <FourBitType kType, ScalarType kIn>
void QuantizeImpl(const void* input, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax) {
  uint8_t codes[internal::kMaxBlocksize + 1];
  internal::ForEachQuantBlock<kIn>(
      input, n, blocksize, absmax,
      [&](int64_t begin, const float* values, int64_t count, float inv) {
        for (int64_t i = 0; i < count; ++i) codes[i] = Encode<kType>(values[i] * inv);
        // blocksize is even, so only an odd n leaves a lone element, whose partner is the
        // kernel's zero padding.
        codes[count] = Encode<kType>(0.0f * inv);
        uint8_t* out = packed + begin / 2;
        for (int64_t j = 0; j < (count + 1) / 2; ++j) {
          out[j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
        }
      });
}

// Each block has only 16 possible outputs: convert them once, then every byte is two lookups.
template <ScalarType kOut>
void DequantizeImpl(const std::array<float, 16>& lut, const uint8_t* packed, const float* absmax,
                    int64_t n, int64_t blocksize, void* output) {
  using Out = FloatElem<kOut>;
  using Bits = typename Out::Bits;
  Bits* out = static_cast<Bits*>(output);
  const int64_t nblocks = NumBlocks(n, blocksize);
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min(begin + blocksize, n);
    Bits table[16];
    for (int c = 0; c < 16; ++c) table[c] = Out::Convert(lut[c] * absmax[b]);
    int64_t k = begin;
    for (; k + 1 < end; k += 2) {
      const uint8_t byte = packed[k / 2];
      out[k] = table[byte >> 4];
      out[k + 1] = table[byte & 0xF];
    }
    if (k < end) out[k] = table[packed[k / 2] >> 4];
  }
}

absl::Status CheckArgs(int64_t n, int64_t blocksize, ScalarType type, const char* what) {
  KBITD_RETURN_IF_ERROR(internal::CheckCount(n, "4-bit element count n"));
  KBITD_RETURN_IF_ERROR(Validate4bitBlocksize(blocksize));
  return internal::CheckFloatType(type, what);
}

}  // namespace

absl::StatusOr<FourBitType> FourBitTypeFromName(std::string_view name) {
  if (name == "nf4") return FourBitType::kNf4;
  if (name == "fp4") return FourBitType::kFp4;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown 4-bit quant_type \"", std::string(name), "\" (expected nf4 or fp4)"));
}

std::string_view FourBitTypeName(FourBitType type) {
  return type == FourBitType::kNf4 ? "nf4" : "fp4";
}

absl::Status Validate4bitBlocksize(int64_t blocksize) {
  if (blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("4-bit blocksize must be a power of two in [32, 4096], got ", blocksize));
}

absl::Status Quantize4bit(FourBitType type, const void* input, ScalarType input_type, int64_t n,
                          int64_t blocksize, uint8_t* packed, float* absmax) {
  KBITD_RETURN_IF_ERROR(CheckArgs(n, blocksize, input_type, "4-bit quantization input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(input, n, "4-bit quantization input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(packed, n, "4-bit packed output"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(absmax, n, "4-bit absmax output"));
  internal::DispatchFloat(input_type, [&](auto in) {
    if (type == FourBitType::kNf4) {
      QuantizeImpl<FourBitType::kNf4, decltype(in)::value>(input, n, blocksize, packed, absmax);
    } else {
      QuantizeImpl<FourBitType::kFp4, decltype(in)::value>(input, n, blocksize, packed, absmax);
    }
  });
  return absl::OkStatus();
}

absl::Status Dequantize4bit(FourBitType type, const uint8_t* packed, const float* absmax, int64_t n,
                            int64_t blocksize, ScalarType output_type, void* output) {
  KBITD_RETURN_IF_ERROR(CheckArgs(n, blocksize, output_type, "4-bit dequantization output"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(packed, n, "4-bit packed input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(absmax, n, "4-bit absmax input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(output, n, "4-bit dequantization output"));
  const std::array<float, 16>& lut = type == FourBitType::kNf4 ? Nf4Code() : Fp4Code();
  internal::DispatchFloat(output_type, [&](auto out) {
    DequantizeImpl<decltype(out)::value>(lut, packed, absmax, n, blocksize, output);
  });
  return absl::OkStatus();
}

}  // namespace kbitd::quant
