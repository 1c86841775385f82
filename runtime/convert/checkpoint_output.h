// Writing a Hugging Face checkpoint folder safely: the folder is built under a temporary name next
// to its destination and renamed into place only when complete (a failed or interrupted run
// leaves nothing at the destination), tensors go into model.safetensors or into shards plus
// model.safetensors.index.json as transformers' save_pretrained lays them out.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/json.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/convert/convert_progress.h"

namespace kbitd::runtime {

// A folder being built at "<parent>/.<name>.partial-XXXXXX" for the destination "<parent>/<name>".
// The destination must not exist. Destroying an uncommitted StagedFolder removes it. Not
// thread-safe.
class StagedFolder {
 public:
  static absl::StatusOr<std::unique_ptr<StagedFolder>> Create(const std::string& destination);
  ~StagedFolder();
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;

  const std::string& path() const { return staging_; }  // write here
  const std::string& destination() const { return destination_; }
  // Renames the folder into place; fails (and keeps nothing) if the destination appeared meanwhile.
  absl::Status Commit();

 private:
  StagedFolder(std::string destination, std::string staging)
      : destination_(std::move(destination)), staging_(std::move(staging)) {}
  std::string destination_;
  std::string staging_;
  bool committed_ = false;
};

// Streams tensors into `dir` as model.safetensors, or, once they exceed max_shard_bytes, as
// model-0000i-of-0000N.safetensors shards with model.safetensors.index.json (weight_map sorted,
// metadata.total_size = tensor bytes; written like transformers: indent 2, sorted keys). Tensors
// added between two BeginGroup calls stay in one shard (transformers reads a bitsandbytes
// module's quant-state tensors from the shard holding its weight). Not thread-safe.
class ShardedCheckpointWriter {
 public:
  struct Options {
    uint64_t max_shard_bytes = 5'000'000'000;  // transformers' historical "5GB" default
    SafetensorsMetadata metadata = {{"format", "pt"}};
  };
  static absl::StatusOr<std::unique_ptr<ShardedCheckpointWriter>> Create(const std::string& dir,
                                                                         Options options);

  // Starts a group of tensors of about `bytes`; opens a new shard first if the current one is
  // non-empty and would grow past max_shard_bytes.
  absl::Status BeginGroup(uint64_t bytes);
  absl::Status Add(const std::string& name, ScalarType dtype, std::vector<int64_t> shape,
                   std::span<const uint8_t> data);
  // Finishes the last shard, names the files and writes the index when there are several.
  absl::Status Finish();

  uint64_t total_bytes() const { return total_bytes_; }
  int num_shards() const { return static_cast<int>(shard_tensors_.size()); }

 private:
  ShardedCheckpointWriter(std::string dir, Options options)
      : dir_(std::move(dir)), options_(std::move(options)) {}
  absl::Status StartShard();
  std::string ShardTempPath(size_t index) const;

  std::string dir_;
  Options options_;
  std::unique_ptr<SafetensorsWriter> current_;
  uint64_t current_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<std::vector<std::string>> shard_tensors_;  // tensor names per shard
};

// Copies the files that travel with the weights (tokenizer files, generation_config.json, chat
// templates, ...) from `from` to `to`: every regular, non-hidden file except config.json, the
// safetensors files and their index, and pickled/other weight formats (.bin, .pt, .pth, .ckpt,
// .h5, .msgpack, .gguf), which must not be carried over next to converted weights.
absl::Status CopyAuxiliaryFiles(const std::string& from, const std::string& to);

// Counts one finished conversion item into `progress` and reports it to `callback` (may be
// empty); CANCELLED (naming `out_dir`) when the callback asks to stop.
absl::Status ReportConvertedItem(const ConvertProgressFn& callback, const std::string& name,
                                 const std::string& action, uint64_t bytes_read,
                                 uint64_t bytes_written, const std::string& out_dir,
                                 ConvertProgress* progress);

// Completes a converted checkpoint: finishes `writer` (recording totals in `summary`), writes
// `config` as config.json the way transformers does, copies the side files of `in_dir` and renames
// `staged` into place.
absl::Status CompleteCheckpointFolder(ShardedCheckpointWriter& writer, StagedFolder& staged,
                                      const std::string& in_dir, const JsonValue& config,
                                      ConvertSummary* summary);

// float32, float16 or bfloat16: the dtypes a dequantized or cast tensor may be written in.
bool IsFloatingDtype(ScalarType type);

// Converts `count` elements of `from` at `data` to `to` (floating-point dtypes), into `out`.
void CastElements(const void* data, ScalarType from, size_t count, ScalarType to,
                  std::vector<uint8_t>* out);

// config.json of a plain checkpoint made from `config`: no "quantization_config", and `dtype`
// (when set) recorded under the key(s) the input used ("dtype" in transformers 5, "torch_dtype"
// before; "torch_dtype" when it had neither).
JsonValue PlainHfConfig(JsonValue config, std::optional<ScalarType> dtype);

// config.json of `in_dir`; FAILED_PRECONDITION (naming the file) when it has a
// "quantization_config": the quantizers refuse an already quantized input.
absl::StatusOr<JsonValue> ReadUnquantizedHfConfig(const std::string& in_dir);

// Writes `text` to `path` (created or truncated); errors name the path.
absl::Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace kbitd::runtime
