// Per-device memory accounting and allocation. Every byte a model, its KV cache or an engine's
// scratch space takes comes from the pool of its device, which counts bytes per category and per
// owner (model name), enforces the device's max_memory and reports each change to an observer (the
// server's metrics). Thread-safe: loaders and engines of different models share one pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "runtime/device.h"
#include "runtime/tensor.h"

namespace kbitd::runtime {

enum class MemoryCategory { kWeights = 0, kKvCache = 1, kWorkspace = 2 };
inline constexpr int kNumMemoryCategories = 3;
const char* MemoryCategoryName(MemoryCategory category);  // "weights", "kv_cache", "workspace"

// Observer seam so the runtime never depends on the metrics library. Called after each change
// with the totals as of the call, one call at a time per pool and in the order the totals were
// read, so the last call for an (owner, category) carries its current bytes. Called with the
// pool's mutex released, but it must not allocate from or free into the same pool.
class MemoryObserver {
 public:
  virtual ~MemoryObserver() = default;
  virtual void OnMemoryChanged(const Device& device, const std::string& owner,
                               MemoryCategory category, int64_t owner_bytes,
                               int64_t device_bytes) = 0;
};

// Raw memory of one device (runtime/cpu/cpu_allocator.h for the host).
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr, size_t bytes) = 0;
};

class MemoryPool;

// Owns one allocation; returns it to its pool on destruction. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return bytes_; }
  bool empty() const { return data_ == nullptr; }
  // The device of the pool it came from (cpu for an empty buffer).
  Device device() const;
  // A view of the start of the buffer as a tensor on its device. The caller keeps
  // dims x dtype within size().
  Tensor View(ScalarType dtype, std::initializer_list<int64_t> dims) const {
    return Tensor::Make(data_, dtype, dims, device());
  }
  void Reset();

 private:
  friend class MemoryPool;
  std::shared_ptr<MemoryPool> pool_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  MemoryCategory category_ = MemoryCategory::kWorkspace;
  std::string owner_;
};

class MemoryPool : public std::enable_shared_from_this<MemoryPool> {
 public:
  struct Options {
    Device device;
    int64_t max_bytes = 0;               // 0 = no limit (accelerate's max_memory for this device)
    MemoryObserver* observer = nullptr;  // not owned; must outlive the pool
    std::unique_ptr<DeviceAllocator> allocator;  // null = NewCpuAllocator() (CPU only)
  };
  static absl::StatusOr<std::shared_ptr<MemoryPool>> Create(Options options);

  // RESOURCE_EXHAUSTED (naming device, owner, category and sizes) when it would pass max_bytes,
  // or the owner's limit. Zero-byte requests give an empty Buffer. Memory is zero-initialised on
  // the CPU.
  absl::StatusOr<Buffer> Allocate(size_t bytes, MemoryCategory category, const std::string& owner);

  // Caps what `owner` may hold in this pool, all categories together (a model's own max_memory
  // for this device, transformers' from_pretrained(max_memory=...), within the device's). The
  // limit lasts as long as the returned handle; a later limit for the same owner replaces it, and
  // dropping the earlier handle then leaves the later one in place. bytes <= 0: no limit.
  std::shared_ptr<void> LimitOwner(const std::string& owner, int64_t bytes);
  // What `owner` may still allocate: the least of the device's and the owner's remaining bytes;
  // -1 when neither is limited.
  int64_t owner_bytes_left(const std::string& owner) const;

  const Device& device() const { return device_; }
  int64_t max_bytes() const { return max_bytes_; }
  int64_t used_bytes() const;
  int64_t bytes(MemoryCategory category) const;
  int64_t owner_bytes(const std::string& owner, MemoryCategory category) const;
  int64_t owner_bytes(const std::string& owner) const;

 private:
  friend class Buffer;
  explicit MemoryPool(Options options);
  void Release(void* data, size_t bytes, MemoryCategory category, const std::string& owner);
  void Notify(const std::string& owner, MemoryCategory category);

  Device device_;
  int64_t max_bytes_;
  MemoryObserver* observer_;
  std::unique_ptr<DeviceAllocator> allocator_;
  // Serialises Notify's read of the totals with its observer call: without it, a thread that read
  // older totals could deliver them after another thread delivered newer ones.
  absl::Mutex notify_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  int64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t by_category_[kNumMemoryCategories] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  std::map<std::pair<std::string, int>, int64_t> by_owner_ ABSL_GUARDED_BY(mu_);
  struct OwnerLimit {
    int64_t bytes;
    uint64_t generation;  // which LimitOwner call set it
  };
  std::map<std::string, OwnerLimit> owner_limits_ ABSL_GUARDED_BY(mu_);
  uint64_t limit_generation_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t OwnerTotalLocked(const std::string& owner) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace kbitd::runtime
