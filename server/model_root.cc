#include "server/model_root.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace kbitd::server {
namespace {

absl::StatusOr<std::string> RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  if (realpath(path.c_str(), buffer) == nullptr) {
    const int error = errno;
    std::string message = absl::StrCat(path, ": ", std::strerror(error));
    if (error == ENOENT || error == ENOTDIR) return absl::NotFoundError(message);
    return absl::FailedPreconditionError(message);
  }
  return std::string(buffer);
}

}  // namespace

absl::StatusOr<ModelRoot> ModelRoot::Create(std::string_view root) {
  if (root.empty()) return absl::InvalidArgumentError("model root is empty");
  auto real = RealPath(std::string(root));
  if (!real.ok()) {
    return absl::Status(real.status().code(), absl::StrCat("model root ", real.status().message()));
  }
  struct stat info;
  if (stat(real->c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("model root ", *real, " is not a folder"));
  }
  return ModelRoot(*real == "/" ? std::string() : *real);
}

absl::Status ModelRoot::CheckLexically(std::string_view relative) const {
  const std::string shown = absl::CHexEscape(std::string(relative));
  if (relative.empty()) return absl::InvalidArgumentError("path is empty");
  if (relative.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("path '", shown, "' contains a NUL byte"));
  }
  if (relative.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("path '", shown, "' is absolute; give it relative to the model root"));
  }
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(relative.data(), relative.size()), '/')) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", shown, "' contains '..'; it must stay inside the model root"));
    }
  }
  return absl::OkStatus();
}

absl::Status ModelRoot::CheckInside(std::string_view relative, const std::string& real) const {
  if (real == root_ || (real.size() > root_.size() && real.compare(0, root_.size(), root_) == 0 &&
                        real[root_.size()] == '/')) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("path '", absl::CHexEscape(std::string(relative)),
                                                  "' resolves outside the model root (symlink)"));
}

absl::StatusOr<std::string> ModelRoot::Resolve(std::string_view relative) const {
  KBITD_RETURN_IF_ERROR(CheckLexically(relative));
  auto real = RealPath(absl::StrCat(root_, "/", std::string(relative)));
  if (!real.ok()) {
    return absl::Status(real.status().code(),
                        absl::StrCat("path '", absl::CHexEscape(std::string(relative)),
                                     "' not found in the model root"));
  }
  KBITD_RETURN_IF_ERROR(CheckInside(relative, *real));
  return *real;
}

absl::StatusOr<std::string> ModelRoot::ResolveNew(std::string_view relative) const {
  KBITD_RETURN_IF_ERROR(CheckLexically(relative));
  std::string_view trimmed = relative;
  while (!trimmed.empty() && trimmed.back() == '/') trimmed.remove_suffix(1);
  const size_t slash = trimmed.rfind('/');
  const std::string_view parent = slash == std::string_view::npos ? "" : trimmed.substr(0, slash);
  const std::string_view leaf =
      slash == std::string_view::npos ? trimmed : trimmed.substr(slash + 1);
  if (leaf.empty() || leaf == ".") {
    return absl::InvalidArgumentError(absl::StrCat(
        "path '", absl::CHexEscape(std::string(relative)), "' names no new file or folder"));
  }
  std::string parent_real = root_;
  if (!parent.empty()) {
    KBITD_ASSIGN_OR_RETURN(parent_real, Resolve(parent));
  }
  const std::string target = absl::StrCat(parent_real, "/", std::string(leaf));
  struct stat info;
  if (lstat(target.c_str(), &info) == 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("path '", absl::CHexEscape(std::string(relative)), "' already exists"));
  }
  return target;
}

}  // namespace kbitd::server
