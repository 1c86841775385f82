#include "runtime/cpu/cpu_allocator.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kbitd::runtime {
namespace {

class CpuAllocator : public DeviceAllocator {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    size_t rounded = (bytes + 63) / 64 * 64;
    void* ptr = std::aligned_alloc(64, rounded);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("host allocation of ", bytes, " bytes failed"));
    }
    std::memset(ptr, 0, rounded);
    return ptr;
  }
  void Free(void* ptr, size_t) override { std::free(ptr); }
};

}  // namespace

std::unique_ptr<DeviceAllocator> NewCpuAllocator() { return std::make_unique<CpuAllocator>(); }

}  // namespace kbitd::runtime
