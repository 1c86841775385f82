// The folder every model path lives in. Client-supplied paths are relative to it and may not
// leave it: no absolute paths, no ".." components, and the realpath (symlinks resolved) must stay
// under the root's realpath, the rule Triton added after CVE-2023-31036. Immutable; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kbitd::server {

class ModelRoot {
 public:
  // The root must exist and be a directory.
  static absl::StatusOr<ModelRoot> Create(std::string_view root);

  // An existing file or folder inside the root. INVALID_ARGUMENT for empty, absolute, NUL or
  // ".." paths; PERMISSION_DENIED when symlinks lead outside; NOT_FOUND when it does not exist.
  absl::StatusOr<std::string> Resolve(std::string_view relative) const;

  // A path to create inside the root: its parent must resolve inside the root and the path must
  // not exist yet (ALREADY_EXISTS).
  absl::StatusOr<std::string> ResolveNew(std::string_view relative) const;

  const std::string& path() const { return root_; }

 private:
  explicit ModelRoot(std::string root) : root_(std::move(root)) {}
  absl::Status CheckLexically(std::string_view relative) const;
  absl::Status CheckInside(std::string_view relative, const std::string& real) const;

  std::string root_;  // realpath, no trailing slash
};

}  // namespace kbitd::server
