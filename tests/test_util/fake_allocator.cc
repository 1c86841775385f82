#include "tests/test_util/fake_allocator.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace kbitd::test {

FakeAllocator::~FakeAllocator() {
  absl::MutexLock lock(&mu_);
  for (auto& [ptr, bytes] : live_) std::free(ptr);
}

absl::StatusOr<void*> FakeAllocator::Allocate(size_t bytes) {
  absl::MutexLock lock(&mu_);
  ++calls_;
  if (calls_ == fail_at_call_) {
    return absl::ResourceExhaustedError(absl::StrCat("fake allocator: call ", calls_, " fails"));
  }
  if (fail_over_ >= 0 && static_cast<int64_t>(bytes) > fail_over_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("fake allocator: ", bytes, " bytes is over ", fail_over_));
  }
  void* ptr = std::calloc(1, bytes);
  if (ptr == nullptr) return absl::ResourceExhaustedError("fake allocator: calloc failed");
  live_[ptr] = bytes;
  live_bytes_ += static_cast<int64_t>(bytes);
  return ptr;
}

void FakeAllocator::Free(void* ptr, size_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(ptr);
  if (it == live_.end() || it->second != bytes) {
    ++bad_frees_;
    return;
  }
  live_bytes_ -= static_cast<int64_t>(it->second);
  live_.erase(it);
  std::free(ptr);
}

void FakeAllocator::FailNth(int64_t n) {
  absl::MutexLock lock(&mu_);
  fail_at_call_ = n > 0 ? calls_ + n : 0;
}

void FakeAllocator::FailOver(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  fail_over_ = bytes;
}

int64_t FakeAllocator::live_allocations() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(live_.size());
}

int64_t FakeAllocator::live_bytes() const {
  absl::MutexLock lock(&mu_);
  return live_bytes_;
}

int64_t FakeAllocator::allocate_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

int64_t FakeAllocator::bad_frees() const {
  absl::MutexLock lock(&mu_);
  return bad_frees_;
}

}  // namespace kbitd::test
