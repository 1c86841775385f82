#include "runtime/checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace fs = std::filesystem;
namespace {

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string::npos;
}

}  // namespace

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  if (size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes exceeds the limit of ", max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) {
    return absl::InternalError(absl::StrCat(path, ": read failed"));
  }
  return text;
}

absl::StatusOr<JsonValue> ReadJsonObjectFile(const std::string& path) {
  KBITD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  auto json = ParseJson(text);
  if (!json.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  if (!json->is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  return *std::move(json);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path,
                                                             const SafetensorsLimits& limits) {
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    checkpoint->dir_ = path;
    const std::string index = (fs::path(path) / kSafetensorsIndexName).string();
    const std::string single = (fs::path(path) / kSafetensorsSingleName).string();
    if (fs::exists(index, ec)) {
      checkpoint->label_ = index;
      checkpoint->sharded_ = true;
      KBITD_RETURN_IF_ERROR(checkpoint->OpenIndex(index, limits));
      return checkpoint;
    }
    if (!fs::exists(single, ec)) {
      return absl::NotFoundError(
          absl::StrCat(path, ": no ", kSafetensorsIndexName, " or ", kSafetensorsSingleName));
    }
    checkpoint->label_ = single;
    KBITD_ASSIGN_OR_RETURN(auto shard, SafetensorsFile::Open(single, limits));
    checkpoint->AddShard(std::move(shard));
    return checkpoint;
  }
  checkpoint->dir_ = fs::path(path).parent_path().string();
  checkpoint->label_ = path;
  KBITD_ASSIGN_OR_RETURN(auto shard, SafetensorsFile::Open(path, limits));
  checkpoint->AddShard(std::move(shard));
  return checkpoint;
}

void Checkpoint::AddShard(std::unique_ptr<SafetensorsFile> shard) {
  for (const SafetensorsTensorInfo& info : shard->tensors()) {
    tensors_.emplace(info.name, Location{shard.get(), &info});
  }
  shards_.push_back(std::move(shard));
}

absl::Status Checkpoint::OpenIndex(const std::string& index_path, const SafetensorsLimits& limits) {
  KBITD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path));
  auto json = ParseJson(text);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", json.status().message()));
  }
  const JsonValue* weight_map = json->Find("weight_map");
  if (weight_map == nullptr || !weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"weight_map\" must be a JSON object"));
  }
  if (weight_map->object().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" is empty"));
  }
  // Open every shard once, in first-mention order.
  std::map<std::string, const SafetensorsFile*> opened;
  for (const auto& [tensor, file] : weight_map->object()) {
    if (!file.is_string() || !IsPlainFileName(file.string_value())) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor \"", tensor,
                       "\" must map to a plain file name inside the checkpoint directory"));
    }
    const std::string& name = file.string_value();
    if (opened.count(name)) continue;
    KBITD_ASSIGN_OR_RETURN(auto shard,
                           SafetensorsFile::Open((fs::path(dir_) / name).string(), limits));
    opened[name] = shard.get();
    shards_.push_back(std::move(shard));
  }
  for (const auto& [tensor, file] : weight_map->object()) {
    const SafetensorsFile* shard = opened[file.string_value()];
    const SafetensorsTensorInfo* info = shard->Find(tensor);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", tensor, "\" is missing from its shard ", shard->path()));
    }
    tensors_.emplace(tensor, Location{shard, info});
  }
  size_t unlisted = 0;
  for (const auto& shard : shards_) {
    for (const SafetensorsTensorInfo& info : shard->tensors()) {
      if (!tensors_.count(info.name)) ++unlisted;
    }
  }
  if (unlisted > 0) {
    KBITD_LOG(Warning) << index_path << ": " << unlisted
                       << " tensors in the shards are not listed in the index; ignored";
  }
  if (const JsonValue* metadata = json->Find("metadata"); metadata && metadata->is_object()) {
    if (const JsonValue* total = metadata->Find("total_size");
        total && total->is_number() && total->number_value() != static_cast<double>(TotalBytes())) {
      // Writers disagree on what total_size counts; a mismatch is worth a note, not a failure.
      KBITD_LOG(Warning) << index_path << ": metadata.total_size " << total->number_value()
                         << " differs from the tensors' " << TotalBytes() << " bytes";
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, unused] : tensors_) names.push_back(name);
  return names;
}

const Checkpoint::Location* Checkpoint::Locate(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<const Checkpoint::Location*> Checkpoint::Require(std::string_view name) const {
  const Location* location = Locate(name);
  if (location == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(label_, ": no tensor named \"", std::string(name), "\""));
  }
  return location;
}

absl::StatusOr<const SafetensorsTensorInfo*> Checkpoint::Info(std::string_view name) const {
  KBITD_ASSIGN_OR_RETURN(const Location* location, Require(name));
  return location->info;
}

absl::StatusOr<const SafetensorsFile*> Checkpoint::ShardOf(std::string_view name) const {
  KBITD_ASSIGN_OR_RETURN(const Location* location, Require(name));
  return location->shard;
}

absl::StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  KBITD_ASSIGN_OR_RETURN(const Location* location, Require(name));
  return location->shard->View(*location->info);
}

void Checkpoint::DropPages(std::string_view name) const {
  if (const Location* location = Locate(name)) location->shard->DropPages(*location->info);
}

uint64_t Checkpoint::TotalBytes() const {
  uint64_t total = 0;
  for (const auto& [name, location] : tensors_) total += location.info->size_bytes();
  return total;
}

}  // namespace kbitd::runtime
