#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/cuda/blockwise_8bit.h"
#include "quant/cuda/blockwise_kernels.cuh"
#include "quant/cuda/cuda_check.h"

namespace kbitd::quant::cuda {
namespace {

using internal::IsAligned;

absl::Status CheckArgs(const float* code256, int64_t n, int64_t blocksize, ScalarType type,
                       const char* what) {
  KBITD_RETURN_IF_ERROR(quant::internal::CheckCount(n, "8-bit element count n"));
  KBITD_RETURN_IF_ERROR(Validate8bitBlocksize(blocksize));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(code256, 1, "8-bit code (256 floats)"));
  return quant::internal::CheckFloatType(type, what);
}

}  // namespace

absl::Status QuantizeBlockwise8bit(const float* code256, const void* input, ScalarType input_type,
                                   int64_t n, int64_t blocksize, uint8_t* codes, float* absmax,
                                   void* stream) {
  KBITD_RETURN_IF_ERROR(CheckArgs(code256, n, blocksize, input_type, "8-bit quantization input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(input, n, "8-bit quantization input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(codes, n, "8-bit codes output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, n, "8-bit absmax output"));
  internal::QuantizeParams params{};
  params.input = input;
  params.n = n;
  params.log2_blocksize = internal::Log2Blocksize(blocksize);
  params.codes = codes;
  params.absmax = absmax;
  params.table = code256;
  params.vectorized = IsAligned(input, 16) && IsAligned(codes, 16);
  return internal::DispatchElem(input_type, [&](auto in) {
    return internal::LaunchQuantize<decltype(in), internal::Dynamic8Codec>(
        params, AsCudaStream(stream), "QuantizeBlockwise8bit");
  });
}

absl::Status DequantizeBlockwise8bit(const float* code256, const uint8_t* codes,
                                     const float* absmax, int64_t n, int64_t blocksize,
                                     ScalarType output_type, void* output, void* stream) {
  KBITD_RETURN_IF_ERROR(
      CheckArgs(code256, n, blocksize, output_type, "8-bit dequantization output"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(codes, n, "8-bit codes input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(absmax, n, "8-bit absmax input"));
  KBITD_RETURN_IF_ERROR(quant::internal::CheckPointer(output, n, "8-bit dequantization output"));
  internal::DequantizeParams params{};
  params.codes = codes;
  params.absmax = absmax;
  params.n = n;
  params.log2_blocksize = internal::Log2Blocksize(blocksize);
  params.output = output;
  params.table = code256;
  params.vectorized = IsAligned(output, 16) && IsAligned(codes, 8);
  return internal::DispatchElem(output_type, [&](auto out) {
    return internal::LaunchDequantize<decltype(out), 8>(params, AsCudaStream(stream),
                                                        "DequantizeBlockwise8bit");
  });
}

}  // namespace kbitd::quant::cuda
