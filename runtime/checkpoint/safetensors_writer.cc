#include "runtime/checkpoint/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {
namespace {

absl::Status OsError(const std::string& what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

// Position in safetensors' Dtype enum, whose derived order the reference writer sorts by
// (descending), so larger alignments come first.
int DtypeRank(ScalarType type) {
  switch (type) {
    case ScalarType::kBool:
      return 0;
    case ScalarType::kUInt8:
      return 4;
    case ScalarType::kInt8:
      return 5;
    case ScalarType::kInt16:
      return 11;
    case ScalarType::kFloat16:
      return 13;
    case ScalarType::kBFloat16:
      return 14;
    case ScalarType::kInt32:
      return 15;
    case ScalarType::kFloat32:
      return 17;
    case ScalarType::kFloat64:
      return 19;
    case ScalarType::kInt64:
      return 20;
  }
  return 0;
}

absl::Status WriteAll(int fd, const uint8_t* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError("cannot write", path, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Copies `size` bytes at `offset` of `in_fd` to the current position of `out_fd`; the kernel
// copies (or reflinks) where it can, with a read/write fallback for file systems that refuse.
absl::Status CopyRange(int in_fd, uint64_t offset, uint64_t size, int out_fd,
                       const std::string& path) {
  loff_t in_offset = static_cast<loff_t>(offset);
  while (size > 0) {
    ssize_t n = ::copy_file_range(in_fd, &in_offset, out_fd, nullptr, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size -= static_cast<uint64_t>(n);
  }
  std::vector<uint8_t> buffer(size > 0 ? std::min<uint64_t>(size, 1 << 20) : 0);
  while (size > 0) {
    ssize_t n = ::pread(in_fd, buffer.data(), std::min<uint64_t>(size, buffer.size()), in_offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return OsError("cannot read back spilled data for", path, n < 0 ? errno : EIO);
    KBITD_RETURN_IF_ERROR(WriteAll(out_fd, buffer.data(), static_cast<size_t>(n), path));
    in_offset += n;
    size -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// An anonymous file in `dir` (O_TMPFILE), or a named one unlinked at once where unsupported:
// either way nothing is left behind if the process dies.
absl::StatusOr<int> OpenAnonymousFile(const std::string& dir, const std::string& for_path) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  std::string name = absl::StrCat(for_path, ".spill.XXXXXX");
  fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return OsError("cannot create a temporary file next to", for_path, errno);
  ::unlink(name.c_str());
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, Options options) {
  for (const auto& [key, value] : options.metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": metadata entries must be valid UTF-8"));
    }
  }
  KBITD_ASSIGN_OR_RETURN(int fd, OpenAnonymousFile(ParentDir(path), path));
  return std::unique_ptr<SafetensorsWriter>(new SafetensorsWriter(path, std::move(options), fd));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (spill_fd_ >= 0) ::close(spill_fd_);
}

absl::Status SafetensorsWriter::Add(const std::string& name, ScalarType dtype,
                                    std::vector<int64_t> shape, std::span<const uint8_t> data) {
  auto fail = [&](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\": ", message));
  };
  if (finished_) return fail("writer already finished");
  if (name.empty() || name == "__metadata__" || !IsValidUtf8(name)) {
    return fail("invalid tensor name");
  }
  for (const Entry& entry : entries_) {
    if (entry.name == name) return fail("added twice");
  }
  uint64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) return fail("negative dimension");
    if (d != 0 && elements > static_cast<uint64_t>(INT64_MAX) / static_cast<uint64_t>(d)) {
      return fail("shape product overflows");
    }
    elements *= static_cast<uint64_t>(d);
  }
  const uint64_t itemsize = ScalarTypeSize(dtype);
  if (elements > static_cast<uint64_t>(INT64_MAX) / itemsize ||
      elements * itemsize != data.size()) {
    return fail(
        absl::StrCat("has ", data.size(), " bytes but shape and dtype need ", elements * itemsize));
  }
  KBITD_RETURN_IF_ERROR(WriteAll(spill_fd_, data.data(), data.size(), path_));
  entries_.push_back({name, dtype, std::move(shape), spill_size_, data.size()});
  spill_size_ += data.size();
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError(absl::StrCat(path_, ": already finished"));
  finished_ = true;

  std::vector<size_t> order(entries_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [this](size_t a, size_t b) {
    const Entry& x = entries_[a];
    const Entry& y = entries_[b];
    if (x.dtype != y.dtype) return DtypeRank(x.dtype) > DtypeRank(y.dtype);
    return x.name < y.name;
  });

  JsonValue header = JsonValue::MakeObject();
  if (!options_.metadata.empty()) {
    JsonValue metadata = JsonValue::MakeObject();
    for (const auto& [key, value] : options_.metadata) {
      metadata.mutable_object().emplace_back(key, JsonValue::String(value));
    }
    header.mutable_object().emplace_back("__metadata__", std::move(metadata));
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const Entry& entry = entries_[i];
    JsonValue::Array shape;
    for (int64_t d : entry.shape) shape.push_back(JsonValue::Integer(d));
    JsonValue info = JsonValue::MakeObject();
    info.Set("dtype", JsonValue::String(std::string(SafetensorsDtypeName(entry.dtype))));
    info.Set("shape", JsonValue::MakeArray(std::move(shape)));
    info.Set("data_offsets",
             JsonValue::MakeArray({JsonValue::Integer(static_cast<int64_t>(offset)),
                                   JsonValue::Integer(static_cast<int64_t>(offset + entry.size))}));
    header.mutable_object().emplace_back(entry.name, std::move(info));
    offset += entry.size;
  }
  JsonValue::WriteOptions compact;
  compact.python_separators = false;  // serde_json's compact form, as the reference writes
  std::string text = header.Write(compact);
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > SafetensorsLimits{}.max_header_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": header of ", text.size(), " bytes exceeds the safetensors limit"));
  }
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  std::string framed(reinterpret_cast<const char*>(length), 8);
  framed += text;

  // Written under a temporary name and renamed, so `path` is either complete or untouched.
  std::string temp = absl::StrCat(path_, ".partial.XXXXXX");
  int out_fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (out_fd < 0) return OsError("cannot create", temp, errno);
  ::fchmod(out_fd, 0644);
  absl::Status status = WriteFile(out_fd, framed, order);
  if (status.ok() && ::fsync(out_fd) != 0) status = OsError("cannot sync", temp, errno);
  if (::close(out_fd) != 0 && status.ok()) status = OsError("cannot close", temp, errno);
  if (status.ok() && ::rename(temp.c_str(), path_.c_str()) != 0) {
    status = OsError("cannot rename into place", path_, errno);
  }
  if (!status.ok()) ::unlink(temp.c_str());
  ::close(spill_fd_);
  spill_fd_ = -1;
  return status;
}

absl::Status SafetensorsWriter::WriteFile(int out_fd, const std::string& header,
                                          const std::vector<size_t>& order) {
  KBITD_RETURN_IF_ERROR(
      WriteAll(out_fd, reinterpret_cast<const uint8_t*>(header.data()), header.size(), path_));
  for (size_t i : order) {
    KBITD_RETURN_IF_ERROR(
        CopyRange(spill_fd_, entries_[i].spill_offset, entries_[i].size, out_fd, path_));
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const SafetensorsMetadata& metadata) {
  KBITD_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(path, {metadata}));
  for (const TensorView& t : tensors) {
    KBITD_RETURN_IF_ERROR(writer->Add(std::string(t.name), t.dtype,
                                      std::vector<int64_t>(t.shape.begin(), t.shape.end()),
                                      t.data));
  }
  return writer->Finish();
}

}  // namespace kbitd::runtime
