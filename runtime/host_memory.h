// How much host memory new allocations can still take, for sizing the default KV cache
// (runtime/kv_cache.h). Not a fixed physical-RAM figure: that ignores the other models and
// processes on the host, and inside a container /proc/meminfo shows the host's RAM while the
// kernel kills the container at its cgroup limit, so both are read and the smaller one wins.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kbitd::runtime {

struct HostMemory {
  int64_t available_bytes = 0;
  std::string source;  // what bounds it, for error messages
};

// From the text of /proc/meminfo (its MemAvailable: free memory plus the page cache the kernel can
// reclaim, so the pages of a memory-mapped checkpoint count as available) and of the cgroup's
// memory files; an empty cgroup string means the file is absent. `cgroup_limit` is cgroup v2
// memory.max ("max" = none) or v1 memory.limit_in_bytes (a huge value = none); `cgroup_usage`
// memory.current or memory.usage_in_bytes; `cgroup_stat` memory.stat, whose inactive_file (v1:
// total_inactive_file, as v1's usage counts sub-groups) is subtracted from the usage as the kubelet
// does for its working set, since that page cache is dropped before the kernel kills anything.
// INVALID_ARGUMENT when meminfo has no MemAvailable line or a present cgroup file does not parse.
absl::StatusOr<HostMemory> HostMemoryFrom(absl::string_view meminfo, absl::string_view cgroup_limit,
                                          absl::string_view cgroup_usage,
                                          absl::string_view cgroup_stat);

// The same from /proc/meminfo and /sys/fs/cgroup (v2, else v1's memory/ controller).
absl::StatusOr<HostMemory> ReadHostMemory();

}  // namespace kbitd::runtime
