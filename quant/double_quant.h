// Double ("nested") quantization of the 4-bit absmax (bnb quantize_4bit compress_statistics=True;
// bnb-spec §4): offset = mean(absmax); absmax - offset is 8-bit blockwise quantized with the signed
// dynamic map and nested blocksize 256.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kbitd::quant {

inline constexpr int64_t kNestedBlocksize = 256;

struct NestedAbsmax {
  std::vector<uint8_t> codes;        // one per 4-bit block
  std::vector<float> nested_absmax;  // ceil(nblocks / nested_blocksize)
  std::vector<float> nested_code;    // 256-entry dynamic map used
  float offset = 0;
  int64_t nested_blocksize = kNestedBlocksize;
};

// offset = f32(sum of absmax in double / nblocks). bnb reduces in fp32 on the GPU in an order that
// cannot be reproduced, so its offset may differ in the last bits (the offset is stored in the
// checkpoint, so loading is exact either way). Uses DynamicMap() as nested code.
absl::StatusOr<NestedAbsmax> DoubleQuantizeAbsmax(const float* absmax, int64_t nblocks);

// absmax'[i] = f32(f32(nested_code[codes[i]] * nested_absmax[i / nested_blocksize]) + offset),
// the two roundings of bnb's dequantize_blockwise + add.
absl::Status ReconstructAbsmax(const NestedAbsmax& nested, int64_t nblocks, float* absmax);

}  // namespace kbitd::quant
