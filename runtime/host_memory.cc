#include "runtime/host_memory.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/status_macros.h"

namespace kbitd::runtime {
namespace {

// cgroup v1 writes "no limit" as the largest page-aligned int64; anything this big is no limit.
constexpr int64_t kNoLimit = int64_t{1} << 62;

// The number after `key` in "key value [kB]" lines (/proc/meminfo, memory.stat), times `unit`.
bool FindValue(absl::string_view text, absl::string_view key, int64_t unit, int64_t* value) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t:"), absl::SkipEmpty());
    if (fields.size() >= 2 && fields[0] == key && absl::SimpleAtoi(fields[1], value)) {
      *value *= unit;
      return true;
    }
  }
  return false;
}

std::string ReadOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  return text.ok() ? *std::move(text) : std::string();
}

}  // namespace

absl::StatusOr<HostMemory> HostMemoryFrom(absl::string_view meminfo, absl::string_view cgroup_limit,
                                          absl::string_view cgroup_usage,
                                          absl::string_view cgroup_stat) {
  HostMemory memory;
  if (!FindValue(meminfo, "MemAvailable", 1024, &memory.available_bytes)) {
    return absl::InvalidArgumentError("/proc/meminfo has no MemAvailable line");
  }
  memory.source = "MemAvailable of /proc/meminfo";
  const absl::string_view limit_text = absl::StripAsciiWhitespace(cgroup_limit);
  if (limit_text.empty() || limit_text == "max") return memory;
  int64_t limit = 0, usage = 0;
  if (!absl::SimpleAtoi(limit_text, &limit) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(cgroup_usage), &usage)) {
    return absl::InvalidArgumentError(absl::StrCat("cgroup memory limit '", limit_text,
                                                   "' or usage '", cgroup_usage,
                                                   "' is not a byte count"));
  }
  if (limit >= kNoLimit) return memory;
  // v1's usage counts the sub-groups too, and so does its total_ line; v2 has only the one.
  int64_t inactive_file = 0;
  if (!FindValue(cgroup_stat, "total_inactive_file", 1, &inactive_file)) {
    FindValue(cgroup_stat, "inactive_file", 1, &inactive_file);
  }
  const int64_t working_set = std::max<int64_t>(0, usage - inactive_file);
  const int64_t left = std::max<int64_t>(0, limit - working_set);
  if (left < memory.available_bytes) {
    memory.available_bytes = left;
    memory.source = absl::StrCat("cgroup memory limit ", limit, " minus working set ", working_set);
  }
  return memory;
}

absl::StatusOr<HostMemory> ReadHostMemory() {
  KBITD_ASSIGN_OR_RETURN(std::string meminfo, ReadFileToString("/proc/meminfo"));
  std::string limit = ReadOrEmpty("/sys/fs/cgroup/memory.max");
  if (!limit.empty()) {
    return HostMemoryFrom(meminfo, limit, ReadOrEmpty("/sys/fs/cgroup/memory.current"),
                          ReadOrEmpty("/sys/fs/cgroup/memory.stat"));
  }
  const std::string v1 = "/sys/fs/cgroup/memory/";
  return HostMemoryFrom(meminfo, ReadOrEmpty(v1 + "memory.limit_in_bytes"),
                        ReadOrEmpty(v1 + "memory.usage_in_bytes"), ReadOrEmpty(v1 + "memory.stat"));
}

}  // namespace kbitd::runtime
