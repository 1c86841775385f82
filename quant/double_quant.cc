#include "quant/double_quant.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_8bit.h"
#include "quant/codebooks.h"

namespace kbitd::quant {

absl::StatusOr<NestedAbsmax> DoubleQuantizeAbsmax(const float* absmax, int64_t nblocks) {
  if (nblocks <= 0 || absmax == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("double quantization needs at least one absmax value, got ", nblocks));
  }
  NestedAbsmax nested;
  const std::array<float, 256>& map = DynamicMap();
  nested.nested_code.assign(map.begin(), map.end());
  // Mean in double, rounded once: deterministic and within an ulp or so of bnb's fp32 GPU mean.
  double sum = 0;
  for (int64_t i = 0; i < nblocks; ++i) sum += absmax[i];
  nested.offset = static_cast<float>(sum / static_cast<double>(nblocks));
  std::vector<float> centered(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) centered[i] = absmax[i] - nested.offset;
  nested.codes.resize(nblocks);
  nested.nested_absmax.resize(NumBlocks(nblocks, kNestedBlocksize));
  KBITD_RETURN_IF_ERROR(QuantizeBlockwise8bit(nested.nested_code.data(), centered.data(),
                                              ScalarType::kFloat32, nblocks, kNestedBlocksize,
                                              nested.codes.data(), nested.nested_absmax.data()));
  return nested;
}

absl::Status ReconstructAbsmax(const NestedAbsmax& nested, int64_t nblocks, float* absmax) {
  if (nested.nested_blocksize != kNestedBlocksize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nested_blocksize must be 256 (the only value bitsandbytes kernels support), got ",
        nested.nested_blocksize));
  }
  if (nested.nested_code.size() != 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("nested_quant_map must have 256 entries, got ", nested.nested_code.size()));
  }
  if (nblocks < 0 || static_cast<int64_t>(nested.codes.size()) != nblocks) {
    return absl::InvalidArgumentError(absl::StrCat("nested absmax codes: expected ", nblocks,
                                                   " entries, got ", nested.codes.size()));
  }
  if (static_cast<int64_t>(nested.nested_absmax.size()) != NumBlocks(nblocks, kNestedBlocksize)) {
    return absl::InvalidArgumentError(
        absl::StrCat("nested_absmax: expected ", NumBlocks(nblocks, kNestedBlocksize),
                     " entries for ", nblocks, " blocks, got ", nested.nested_absmax.size()));
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    const float scaled = nested.nested_code[nested.codes[i]] * nested.nested_absmax[i / 256];
    absmax[i] = scaled + nested.offset;
  }
  return absl::OkStatus();
}

}  // namespace kbitd::quant
