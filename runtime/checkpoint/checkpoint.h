// A Hugging Face checkpoint's tensors: one `model.safetensors`, or shards listed by
// `model.safetensors.index.json` ({"metadata": {"total_size": N}, "weight_map": {tensor: file}},
// the layout transformers' save_pretrained writes). Every shard is opened (memory-mapped and fully
// validated) once, up front; a tensor the index lists but its shard lacks is an error. Shard names
// must be plain file names inside the directory (no '/', no "..").
// Immutable after Open(); thread-safe for reads.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"
#include "runtime/checkpoint/safetensors.h"

namespace kbitd::runtime {

inline constexpr char kSafetensorsIndexName[] = "model.safetensors.index.json";
inline constexpr char kSafetensorsSingleName[] = "model.safetensors";

class Checkpoint {
 public:
  // `path` is a checkpoint directory (index preferred over model.safetensors) or a .safetensors
  // file. Errors name the file and tensor at fault.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path,
                                                          const SafetensorsLimits& limits = {});

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }

  // All tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  bool Contains(std::string_view name) const { return Locate(name) != nullptr; }
  // The header entry and the shard holding it; NOT_FOUND naming the checkpoint when absent.
  absl::StatusOr<const SafetensorsTensorInfo*> Info(std::string_view name) const;
  absl::StatusOr<const SafetensorsFile*> ShardOf(std::string_view name) const;
  absl::StatusOr<TensorView> Get(std::string_view name) const;
  // Total bytes of all tensors.
  uint64_t TotalBytes() const;
  // Releases the resident pages of a tensor that has been consumed (see MappedFile::DropPages);
  // a streaming reader calls it to keep memory near one tensor. Unknown names are ignored.
  void DropPages(std::string_view name) const;

 private:
  struct Location {
    const SafetensorsFile* shard;
    const SafetensorsTensorInfo* info;
  };
  Checkpoint() = default;
  const Location* Locate(std::string_view name) const;
  absl::StatusOr<const Location*> Require(std::string_view name) const;  // NOT_FOUND if absent
  absl::Status OpenIndex(const std::string& index_path, const SafetensorsLimits& limits);
  void AddShard(std::unique_ptr<SafetensorsFile> shard);

  std::string dir_;
  std::string label_;  // the index or file path, for messages
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, Location, std::less<>> tensors_;
};

// Reads a JSON file whole (config.json, index.json, ...) with a size cap; errors name the path.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 64 << 20);

// Reads and strictly parses a JSON file that must hold one object (config.json, ...).
absl::StatusOr<JsonValue> ReadJsonObjectFile(const std::string& path);

}  // namespace kbitd::runtime
