// Streams tensors into one safetensors file (format: https://github.com/huggingface/safetensors).
// Tensors are added one at a time and spilled to an unlinked temporary file next to the output, so
// memory stays at one tensor; Finish() writes the header and copies the data into place. The
// layout is the reference writer's (safetensors/src/tensor.rs `prepare`): tensors sorted by dtype
// alignment (largest first) then by name, header padded with spaces to a multiple of 8 bytes, so
// every tensor is aligned to its element size and the bytes equal what Python's
// safetensors.save_file writes for the same tensors and a one-key (or empty) metadata map.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/checkpoint/safetensors.h"

namespace kbitd::runtime {

class SafetensorsWriter {
 public:
  struct Options {
    SafetensorsMetadata metadata;  // written as "__metadata__" when non-empty, in this order
  };

  // Nothing is created at `path` before Finish(); the spill file lives in path's directory.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(const std::string& path,
                                                                   Options options);
  ~SafetensorsWriter();  // closes (and so deletes) the spill file
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Adds one tensor. `data` must hold exactly NumElements(shape) * ScalarTypeSize(dtype) bytes.
  // Names must be unique, non-empty, valid UTF-8 and not "__metadata__".
  absl::Status Add(const std::string& name, ScalarType dtype, std::vector<int64_t> shape,
                   std::span<const uint8_t> data);

  // Writes the file at `path`. On failure the partial file is removed. Call at most once.
  absl::Status Finish();

  const std::string& path() const { return path_; }
  uint64_t data_bytes() const { return spill_size_; }

 private:
  struct Entry {
    std::string name;
    ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t spill_offset;
    uint64_t size;
  };
  SafetensorsWriter(std::string path, Options options, int spill_fd)
      : path_(std::move(path)), options_(std::move(options)), spill_fd_(spill_fd) {}
  absl::Status WriteFile(int out_fd, const std::string& header, const std::vector<size_t>& order);

  std::string path_;
  Options options_;
  int spill_fd_;
  uint64_t spill_size_ = 0;
  std::vector<Entry> entries_;
  bool finished_ = false;
};

// Writes `tensors` (views whose bytes are valid for the call) to `path` in one go.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const SafetensorsMetadata& metadata = {});

}  // namespace kbitd::runtime
