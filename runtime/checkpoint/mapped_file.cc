#include "runtime/checkpoint/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kbitd::runtime {
namespace {

absl::Status OsError(const std::string& what, const std::string& path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

// The page-aligned range covering [offset, offset + length), clipped to the mapping.
void PageRange(size_t map_size, size_t offset, size_t length, size_t* begin, size_t* end) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  *begin = offset / page * page;
  *end = offset + length < map_size ? offset + length : map_size;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OsError("cannot open", path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return OsError("cannot stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* data = nullptr;
  if (size > 0) {
    data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return OsError("cannot mmap", path, err);
    }
  }
  ::close(fd);  // the mapping keeps the file open
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

void MappedFile::WillNeed(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  size_t begin, end;
  PageRange(size_, offset, length, &begin, &end);
  ::madvise(static_cast<char*>(data_) + begin, end - begin, MADV_WILLNEED);
}

void MappedFile::DropPages(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  size_t begin, end;
  PageRange(size_, offset, length, &begin, &end);
  // MADV_DONTNEED on a private read-only file mapping only drops our page-table entries; the
  // next touch re-reads from the page cache, so the bytes stay valid.
  ::madvise(static_cast<char*>(data_) + begin, end - begin, MADV_DONTNEED);
}

}  // namespace kbitd::runtime
