#include "runtime/convert/checkpoint_output.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/quantization_config_json.h"

namespace kbitd::runtime {
namespace fs = std::filesystem;
namespace {

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

bool IsAuxiliaryFile(const std::string& name) {
  if (name.empty() || name[0] == '.' || name == "config.json") return false;
  for (std::string_view suffix :
       {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
        ".ckpt", ".h5", ".msgpack", ".gguf"}) {
    if (EndsWith(name, suffix)) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<StagedFolder>> StagedFolder::Create(const std::string& destination) {
  fs::path dest = fs::path(destination).lexically_normal();
  if (dest.filename().empty()) dest = dest.parent_path();  // trailing slash
  std::error_code ec;
  if (fs::exists(dest, ec) || fs::is_symlink(dest, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat(dest.string(), " already exists; choose a new output folder"));
  }
  fs::path parent = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    return absl::NotFoundError(
        absl::StrCat("the parent folder of ", dest.string(), " does not exist"));
  }
  std::string staging =
      (parent / absl::StrCat(".", dest.filename().string(), ".partial-XXXXXX")).string();
  if (::mkdtemp(staging.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create a folder next to ", dest.string(), ": ", std::strerror(errno)));
  }
  return std::unique_ptr<StagedFolder>(new StagedFolder(dest.string(), staging));
}

StagedFolder::~StagedFolder() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

absl::Status StagedFolder::Commit() {
  std::error_code ec;
  if (fs::exists(destination_, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(destination_, " appeared while writing"));
  }
  fs::permissions(staging_,
                  fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                      fs::perms::others_read | fs::perms::others_exec,
                  ec);
  fs::rename(staging_, destination_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", staging_, " to ", destination_, ": ", ec.message()));
  }
  committed_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShardedCheckpointWriter>> ShardedCheckpointWriter::Create(
    const std::string& dir, Options options) {
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  }
  std::unique_ptr<ShardedCheckpointWriter> writer(
      new ShardedCheckpointWriter(dir, std::move(options)));
  KBITD_RETURN_IF_ERROR(writer->StartShard());
  return writer;
}

std::string ShardedCheckpointWriter::ShardTempPath(size_t index) const {
  return (fs::path(dir_) / absl::StrFormat(".shard-%05d.safetensors", index + 1)).string();
}

absl::Status ShardedCheckpointWriter::StartShard() {
  if (current_ != nullptr) KBITD_RETURN_IF_ERROR(current_->Finish());
  shard_tensors_.emplace_back();
  KBITD_ASSIGN_OR_RETURN(
      current_,
      SafetensorsWriter::Create(ShardTempPath(shard_tensors_.size() - 1), {options_.metadata}));
  current_bytes_ = 0;
  return absl::OkStatus();
}

absl::Status ShardedCheckpointWriter::BeginGroup(uint64_t bytes) {
  if (current_bytes_ > 0 && current_bytes_ + bytes > options_.max_shard_bytes) {
    return StartShard();
  }
  return absl::OkStatus();
}

absl::Status ShardedCheckpointWriter::Add(const std::string& name, ScalarType dtype,
                                          std::vector<int64_t> shape,
                                          std::span<const uint8_t> data) {
  KBITD_RETURN_IF_ERROR(current_->Add(name, dtype, std::move(shape), data));
  current_bytes_ += data.size();
  total_bytes_ += data.size();
  shard_tensors_.back().push_back(name);
  return absl::OkStatus();
}

absl::Status ShardedCheckpointWriter::Finish() {
  KBITD_RETURN_IF_ERROR(current_->Finish());
  current_.reset();
  const size_t n = shard_tensors_.size();
  std::error_code ec;
  if (n == 1) {
    fs::rename(ShardTempPath(0), fs::path(dir_) / kSafetensorsSingleName, ec);
    if (ec) return absl::InternalError(absl::StrCat(dir_, ": ", ec.message()));
    return absl::OkStatus();
  }
  std::vector<std::pair<std::string, JsonValue>> weight_map;
  for (size_t i = 0; i < n; ++i) {
    const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
    fs::rename(ShardTempPath(i), fs::path(dir_) / name, ec);
    if (ec) return absl::InternalError(absl::StrCat(dir_, ": ", ec.message()));
    for (const std::string& tensor : shard_tensors_[i]) {
      weight_map.emplace_back(tensor, JsonValue::String(name));
    }
  }
  JsonValue index = JsonValue::MakeObject(
      {{"metadata", JsonValue::MakeObject(
                        {{"total_size", JsonValue::Integer(static_cast<int64_t>(total_bytes_))}})},
       {"weight_map", JsonValue::MakeObject(std::move(weight_map))}});
  return WriteTextFile((fs::path(dir_) / kSafetensorsIndexName).string(), WriteHfConfigJson(index));
}

absl::Status CopyAuxiliaryFiles(const std::string& from, const std::string& to) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(from, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file(ec) || !IsAuxiliaryFile(name)) continue;
    fs::copy_file(entry.path(), fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot copy ", entry.path().string(), ": ", ec.message()));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", from, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status ReportConvertedItem(const ConvertProgressFn& callback, const std::string& name,
                                 const std::string& action, uint64_t bytes_read,
                                 uint64_t bytes_written, const std::string& out_dir,
                                 ConvertProgress* progress) {
  ++progress->done;
  progress->name = name;
  progress->action = action;
  progress->bytes_read = bytes_read;
  progress->bytes_written = bytes_written;
  if (callback && !callback(*progress)) {
    return absl::CancelledError(
        absl::StrCat("cancelled after ", name, "; nothing was written to ", out_dir));
  }
  return absl::OkStatus();
}

absl::Status CompleteCheckpointFolder(ShardedCheckpointWriter& writer, StagedFolder& staged,
                                      const std::string& in_dir, const JsonValue& config,
                                      ConvertSummary* summary) {
  KBITD_RETURN_IF_ERROR(writer.Finish());
  summary->bytes_written = writer.total_bytes();
  summary->shards = writer.num_shards();
  KBITD_RETURN_IF_ERROR(
      WriteTextFile((fs::path(staged.path()) / "config.json").string(), WriteHfConfigJson(config)));
  KBITD_RETURN_IF_ERROR(CopyAuxiliaryFiles(in_dir, staged.path()));
  return staged.Commit();
}

bool IsFloatingDtype(ScalarType type) {
  return type == ScalarType::kFloat32 || type == ScalarType::kFloat16 ||
         type == ScalarType::kBFloat16;
}

void CastElements(const void* data, ScalarType from, size_t count, ScalarType to,
                  std::vector<uint8_t>* out) {
  out->resize(count * ScalarTypeSize(to));
  for (size_t i = 0; i < count; ++i) StoreFromFloat(out->data(), to, i, LoadAsFloat(data, from, i));
}

JsonValue PlainHfConfig(JsonValue config, std::optional<ScalarType> dtype) {
  auto& members = config.mutable_object();
  members.erase(std::remove_if(members.begin(), members.end(),
                               [](const auto& m) { return m.first == "quantization_config"; }),
                members.end());
  if (dtype) {
    JsonValue name = JsonValue::String(std::string(TorchDtypeName(*dtype)));
    bool set = false;
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (config.Find(key) != nullptr) {
        config.Set(key, name);
        set = true;
      }
    }
    if (!set) config.Set("torch_dtype", name);
  }
  return config;
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<JsonValue> ReadUnquantizedHfConfig(const std::string& in_dir) {
  const std::string config_path = (std::filesystem::path(in_dir) / "config.json").string();
  KBITD_ASSIGN_OR_RETURN(JsonValue hf_config, ReadJsonObjectFile(config_path));
  if (hf_config.Find("quantization_config") != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(config_path, ": the checkpoint is already quantized (quantization_config)"));
  }
  return hf_config;
}

}  // namespace kbitd::runtime
