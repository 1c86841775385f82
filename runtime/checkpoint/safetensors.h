// Reader for the safetensors format (https://github.com/huggingface/safetensors, README "Format"
// and safetensors/src/tensor.rs): 8-byte little-endian header length N, N bytes of UTF-8 JSON,
// then the data region. Every count and size in a header is treated as hostile input: the header
// is validated in full (see ParseSafetensorsHeader) before any tensor byte is handed out, so a
// TensorView always lies inside the mapped file.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/checkpoint/mapped_file.h"

namespace kbitd::runtime {

// `__metadata__`: string -> string, in file order.
using SafetensorsMetadata = std::vector<std::pair<std::string, std::string>>;

// One tensor entry of a header.
struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype_name;           // as written, e.g. "BF16" or "F8_E4M3"
  std::optional<ScalarType> dtype;  // nullopt: a valid safetensors dtype kbitd cannot compute with
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the start of the data region
  uint64_t end = 0;

  uint64_t size_bytes() const { return end - begin; }
  int64_t NumElements() const;
};

struct SafetensorsHeader {
  uint64_t header_size = 0;                    // N
  std::vector<SafetensorsTensorInfo> tensors;  // in data order (ascending offsets)
  SafetensorsMetadata metadata;

  uint64_t data_start() const { return 8 + header_size; }
};

struct SafetensorsLimits {
  // The reference implementation's MAX_HEADER_SIZE.
  uint64_t max_header_bytes = 100'000'000;
};

// Parses and validates the header of a complete safetensors file held in `file`. `label` (usually
// the path) starts every error message. Rules, in the reference reader's order:
//  - at least 8 bytes; N <= limits.max_header_bytes; 8 + N <= file size;
//  - the header is valid UTF-8 and one strict JSON object (duplicate keys, NaN, trailing commas
//    rejected; surrounding whitespace allowed, as writers pad with spaces);
//  - `__metadata__` (optional) maps strings to strings;
//  - each tensor has exactly "dtype" (a known safetensors dtype), "shape" (non-negative integers)
//    and "data_offsets" ([begin, end] integers, begin <= end); shape product x dtype bits is
//    computed with overflow checks, must be whole bytes, and must equal end - begin;
//  - sorted by offset, tensors tile the data region exactly: the first starts at 0, each starts
//    where the previous ended (no gaps, no overlap) and the last ends at the end of the file (no
//    trailing bytes: rejects truncated and polyglot files).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file,
                                                         std::string_view label,
                                                         const SafetensorsLimits& limits = {});

// Bits per element of a safetensors dtype name (e.g. "F16" -> 16, "F4" -> 4); nullopt if unknown.
std::optional<int> SafetensorsDtypeBits(std::string_view dtype_name);

// A tensor inside a mapped file. Non-owning: valid while its SafetensorsFile lives. `data` may be
// unaligned when the file was not written with aligned offsets (kbitd's and the reference writer
// align every tensor to its element size); copy with memcpy when in doubt.
struct TensorView {
  std::string_view name;
  ScalarType dtype;
  std::span<const int64_t> shape;
  std::span<const uint8_t> data;

  int64_t NumElements() const;
  bool IsAligned() const;  // data is aligned to the element size
};

// One memory-mapped, validated safetensors file. Immutable after Open(); thread-safe for reads.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path, const SafetensorsLimits& limits = {});

  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return header_.tensors; }
  const SafetensorsMetadata& metadata() const { return header_.metadata; }
  // Tensor names, sorted.
  std::vector<std::string> TensorNames() const;

  // nullptr when absent.
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // NOT_FOUND naming the file when absent; INVALID_ARGUMENT when its dtype has no ScalarType.
  absl::StatusOr<TensorView> Get(std::string_view name) const;
  absl::StatusOr<TensorView> View(const SafetensorsTensorInfo& info) const;

  // Page-cache hints for one tensor's bytes (see MappedFile).
  void WillNeed(const SafetensorsTensorInfo& info) const;
  void DropPages(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header);

  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::vector<size_t> by_name_;  // indices into header_.tensors, sorted by name
};

}  // namespace kbitd::runtime
