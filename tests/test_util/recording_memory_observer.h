// A MemoryObserver that records every notification, in the order the observer received them, so
// tests can check what the metrics would have shown. Thread-safe: pools notify from whichever
// thread allocated or freed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "runtime/memory_pool.h"

namespace kbitd::test {

struct MemoryEvent {
  runtime::Device device;
  std::string owner;
  runtime::MemoryCategory category;
  int64_t owner_bytes;
  int64_t device_bytes;
};

class RecordingMemoryObserver : public runtime::MemoryObserver {
 public:
  void OnMemoryChanged(const runtime::Device& device, const std::string& owner,
                       runtime::MemoryCategory category, int64_t owner_bytes,
                       int64_t device_bytes) override {
    absl::MutexLock lock(&mu_);
    events_.push_back({device, owner, category, owner_bytes, device_bytes});
  }

  std::vector<MemoryEvent> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  // The last event overall, or the last one for (owner, category): what a gauge would show.
  std::optional<MemoryEvent> Last() const {
    absl::MutexLock lock(&mu_);
    if (events_.empty()) return std::nullopt;
    return events_.back();
  }
  std::optional<MemoryEvent> Last(const std::string& owner,
                                  runtime::MemoryCategory category) const {
    absl::MutexLock lock(&mu_);
    for (auto it = events_.rbegin(); it != events_.rend(); ++it) {
      if (it->owner == owner && it->category == category) return *it;
    }
    return std::nullopt;
  }
  void Clear() {
    absl::MutexLock lock(&mu_);
    events_.clear();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<MemoryEvent> events_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kbitd::test
