// Double ("nested") quantization of the 4-bit absmax on the GPU: the device-pointer twin of
// quant/double_quant.h with byte-identical results. Public: no CUDA headers; `stream` is a
// cudaStream_t (nullptr = default stream); work is queued and not waited for.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "quant/double_quant.h"

namespace kbitd::quant::cuda {

// absmax: nblocks floats (device). nested_code: the 256-entry ascending map (device; bitsandbytes
// uses DynamicMap()). Writes, all on the device:
//   offset[0]      = f32(sum of absmax in double / nblocks), the same float as the CPU reference;
//   codes          = nblocks bytes, 8-bit codes of absmax[i] - offset (blocksize kNestedBlocksize);
//   nested_absmax  = NumBlocks(nblocks, kNestedBlocksize) floats.
// `codes` doubles as scratch for the offset reduction before the codes are written.
absl::Status DoubleQuantizeAbsmax(const float* absmax, int64_t nblocks, const float* nested_code,
                                  uint8_t* codes, float* nested_absmax, float* offset,
                                  void* stream);

// absmax[i] = f32(f32(nested_code[codes[i]] * nested_absmax[i / 256]) + offset): the absmax a
// nested 4-bit tensor dequantizes with. offset is the host value stored in the quant state.
absl::Status ReconstructAbsmax(const uint8_t* codes, const float* nested_absmax,
                               const float* nested_code, float offset, int64_t nblocks,
                               float* absmax, void* stream);

}  // namespace kbitd::quant::cuda
