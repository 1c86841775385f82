// A DeviceAllocator for tests: host memory (zeroed, like the CPU allocator) that counts what is
// live and can be told to fail, so tests can check that the pool counts, limits and reports
// correctly and leaves nothing counted when the device refuses memory. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "runtime/memory_pool.h"

namespace kbitd::test {

class FakeAllocator : public runtime::DeviceAllocator {
 public:
  ~FakeAllocator() override;  // frees what is still live, so a failing test does not leak

  // RESOURCE_EXHAUSTED when told to fail this call (FailNth, FailOver).
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* ptr, size_t bytes) override;

  // The n-th Allocate call from now (1 = the next one) fails; 0 turns it off.
  void FailNth(int64_t n);
  // Every Allocate of more than `bytes` fails; -1 turns it off.
  void FailOver(int64_t bytes);

  int64_t live_allocations() const;
  int64_t live_bytes() const;
  int64_t allocate_calls() const;  // failed ones included
  // Frees of a pointer this allocator did not hand out, or with another size than it had: the
  // contract a device allocator relies on (cudaFree needs no size, but a pooled one does).
  int64_t bad_frees() const;

 private:
  mutable absl::Mutex mu_;
  std::map<void*, size_t> live_ ABSL_GUARDED_BY(mu_);
  int64_t live_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bad_frees_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t fail_at_call_ ABSL_GUARDED_BY(mu_) = 0;  // calls_ value that fails; 0 = none
  int64_t fail_over_ ABSL_GUARDED_BY(mu_) = -1;
};

}  // namespace kbitd::test
