// A read-only memory map of a whole file (POSIX mmap). Pages are faulted in on first touch, so
// opening a multi-GB checkpoint costs no memory until its tensors are read; DropPages() lets a
// streaming loader hand pages back to the page cache once a tensor has been consumed.
// Thread-safety: immutable after Open(); bytes() may be read from many threads.
// Caveat (mmap): if another process truncates the file while it is mapped, touching the lost pages
// raises SIGBUS; checkpoints are expected to be immutable while served.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kbitd::runtime {

class MappedFile {
 public:
  // Maps `path` (a regular file, possibly empty). Errors name the path and the OS reason.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }
  size_t size() const { return size_; }

  // Advises the kernel that [offset, offset + length) will be read soon / is no longer needed.
  // Both are hints: errors are ignored and the bytes stay readable.
  void WillNeed(size_t offset, size_t length) const;
  void DropPages(size_t offset, size_t length) const;

 private:
  MappedFile(std::string path, void* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  void* data_;  // nullptr for an empty file
  size_t size_;
};

}  // namespace kbitd::runtime
