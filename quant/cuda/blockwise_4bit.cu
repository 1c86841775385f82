#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/blockwise_kernels.cuh"
#include "quant/cuda/cuda_check.h"

namespace kbitd::quant::cuda {
namespace {

using internal::DequantizeParams;
using internal::IsAligned;
using internal::QuantizeParams;

absl::Status CheckArgs(int64_t n, int64_t blocksize, ScalarType type, const char* what) {
  KBITD_RETURN_IF_ERROR(quant::internal::CheckCount(n, "4-bit element count n"));
  KBITD_RETURN_IF_ERROR(Validate4bitBlocksize(blocksize));
  return quant::internal::CheckFloatType(type, what);
}

internal::Lut16 CodeBook(FourBitType type) {
  const auto& bits = type == FourBitType::kNf4 ? kNf4CodeBits : kFp4CodeBits;
  internal::Lut16 lut;
  for (int i = 0; i < 16; ++i) lut.v[i] = FloatFromBits(bits[i]);
  return lut;
}

}  // namespace

absl::Status Quantize4bit(FourBitType type, const void* input, ScalarType input_type, int64_t n,
                          int64_t blocksize, uint8_t* packed, float* absmax, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckArgs(n, blocksize, input_type, "4-bit quantization input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(input, n, "4-bit quantization input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(packed, n, "4-bit packed output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, n, "4-bit absmax output"));
  QuantizeParams params{};
  params.input = input;
  params.n = n;
  params.log2_blocksize = internal::Log2Blocksize(blocksize);
  params.codes = packed;
  params.absmax = absmax;
  params.vectorized = IsAligned(input, 16) && IsAligned(packed, 8);
  return internal::DispatchElem(input_type, [&](auto in) {
    using In = decltype(in);
    return type == FourBitType::kNf4 ? internal::LaunchQuantize<In, internal::Nf4Codec>(
                                           params, AsCudaStream(stream), "Quantize4bit(nf4)")
                                     : internal::LaunchQuantize<In, internal::Fp4Codec>(
                                           params, AsCudaStream(stream), "Quantize4bit(fp4)");
  });
}

absl::Status Dequantize4bit(FourBitType type, const uint8_t* packed, const float* absmax, int64_t n,
                            int64_t blocksize, ScalarType output_type, void* output, void* stream) {
  KBITD_RETURN_IF_ERROR(CheckArgs(n, blocksize, output_type, "4-bit dequantization output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(packed, n, "4-bit packed input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, n, "4-bit absmax input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(output, n, "4-bit dequantization output"));
  DequantizeParams params{};
  params.codes = packed;
  params.absmax = absmax;
  params.n = n;
  params.log2_blocksize = internal::Log2Blocksize(blocksize);
  params.output = output;
  params.lut16 = CodeBook(type);
  params.vectorized = IsAligned(output, 16) && IsAligned(packed, 4);
  return internal::DispatchElem(output_type, [&](auto out) {
    return internal::LaunchDequantize<decltype(out), 4>(params, AsCudaStream(stream),
                                                        "Dequantize4bit");
  });
}

}  // namespace kbitd::quant::cuda
