#include "runtime/memory_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/cpu/cpu_allocator.h"

namespace kbitd::runtime {
const char* MemoryCategoryName(MemoryCategory category) {
  switch (category) {
    case MemoryCategory::kWeights:
      return "weights";
    case MemoryCategory::kKvCache:
      return "kv_cache";
    case MemoryCategory::kWorkspace:
      return "workspace";
  }
  return "unknown";
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = std::move(other.pool_);
    data_ = other.data_;
    bytes_ = other.bytes_;
    category_ = other.category_;
    owner_ = std::move(other.owner_);
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

Device Buffer::device() const { return pool_ != nullptr ? pool_->device() : Device::Cpu(); }

void Buffer::Reset() {
  if (data_ != nullptr && pool_ != nullptr) pool_->Release(data_, bytes_, category_, owner_);
  pool_.reset();
  data_ = nullptr;
  bytes_ = 0;
}

MemoryPool::MemoryPool(Options options)
    : device_(options.device),
      max_bytes_(options.max_bytes),
      observer_(options.observer),
      allocator_(std::move(options.allocator)) {}

absl::StatusOr<std::shared_ptr<MemoryPool>> MemoryPool::Create(Options options) {
  if (options.max_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_memory for ", options.device.ToString(),
                                                   " must be >= 0, got ", options.max_bytes));
  }
  if (options.allocator == nullptr) {
    if (!options.device.is_cpu()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no allocator given for device ", options.device.ToString()));
    }
    options.allocator = NewCpuAllocator();
  }
  return std::shared_ptr<MemoryPool>(new MemoryPool(std::move(options)));
}

absl::StatusOr<Buffer> MemoryPool::Allocate(size_t bytes, MemoryCategory category,
                                            const std::string& owner) {
  Buffer buffer;
  if (bytes == 0) return buffer;
  {
    absl::MutexLock lock(&mu_);
    if (max_bytes_ > 0 && used_ + static_cast<int64_t>(bytes) > max_bytes_) {
      return absl::ResourceExhaustedError(
          absl::StrCat(device_.ToString(), " memory limit: ", owner, " needs ", bytes,
                       " more bytes of ", MemoryCategoryName(category), " but ", used_,
                       " of max_memory ", max_bytes_, " bytes are in use"));
    }
    if (auto limit = owner_limits_.find(owner); limit != owner_limits_.end()) {
      const int64_t held = OwnerTotalLocked(owner);
      if (held + static_cast<int64_t>(bytes) > limit->second.bytes) {
        return absl::ResourceExhaustedError(
            absl::StrCat(device_.ToString(), " memory limit of ", owner, ": it needs ", bytes,
                         " more bytes of ", MemoryCategoryName(category), " but holds ", held,
                         " of its max_memory ", limit->second.bytes, " bytes"));
      }
    }
    used_ += bytes;  // reserve before allocating so concurrent loaders cannot overshoot
    by_category_[static_cast<int>(category)] += bytes;
    by_owner_[{owner, static_cast<int>(category)}] += bytes;
  }
  absl::StatusOr<void*> ptr = allocator_->Allocate(bytes);
  if (!ptr.ok()) {
    Release(nullptr, bytes, category, owner);
    return ptr.status();
  }
  buffer.pool_ = shared_from_this();
  buffer.data_ = *ptr;
  buffer.bytes_ = bytes;
  buffer.category_ = category;
  buffer.owner_ = owner;
  Notify(owner, category);
  return buffer;
}

void MemoryPool::Release(void* data, size_t bytes, MemoryCategory category,
                         const std::string& owner) {
  if (data != nullptr) allocator_->Free(data, bytes);
  {
    absl::MutexLock lock(&mu_);
    used_ -= bytes;
    by_category_[static_cast<int>(category)] -= bytes;
    auto it = by_owner_.find({owner, static_cast<int>(category)});
    if (it != by_owner_.end()) {
      it->second -= bytes;
      if (it->second == 0) by_owner_.erase(it);
    }
  }
  Notify(owner, category);
}

std::shared_ptr<void> MemoryPool::LimitOwner(const std::string& owner, int64_t bytes) {
  if (bytes <= 0) return nullptr;
  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    generation = ++limit_generation_;
    owner_limits_[owner] = OwnerLimit{bytes, generation};
  }
  std::weak_ptr<MemoryPool> weak = weak_from_this();
  return std::shared_ptr<void>(nullptr, [weak, owner, generation](void*) {
    if (std::shared_ptr<MemoryPool> pool = weak.lock()) {
      absl::MutexLock lock(&pool->mu_);
      auto it = pool->owner_limits_.find(owner);
      if (it != pool->owner_limits_.end() && it->second.generation == generation) {
        pool->owner_limits_.erase(it);
      }
    }
  });
}

int64_t MemoryPool::OwnerTotalLocked(const std::string& owner) const {
  int64_t total = 0;
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    auto it = by_owner_.find({owner, c});
    if (it != by_owner_.end()) total += it->second;
  }
  return total;
}

int64_t MemoryPool::owner_bytes_left(const std::string& owner) const {
  absl::MutexLock lock(&mu_);
  int64_t left = -1;
  if (max_bytes_ > 0) left = std::max<int64_t>(0, max_bytes_ - used_);
  if (auto limit = owner_limits_.find(owner); limit != owner_limits_.end()) {
    const int64_t owner_left = std::max<int64_t>(0, limit->second.bytes - OwnerTotalLocked(owner));
    left = left < 0 ? owner_left : std::min(left, owner_left);
  }
  return left;
}

void MemoryPool::Notify(const std::string& owner, MemoryCategory category) {
  if (observer_ == nullptr) return;
  // Every change is followed by its Notify, so the last Notify to take notify_mu_ reads the totals
  // after every change: the observer's last word is the current one. mu_ is released before the
  // call so the observer may read the pool.
  absl::MutexLock notify(&notify_mu_);
  int64_t owner_total, device_total;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_owner_.find({owner, static_cast<int>(category)});
    owner_total = it == by_owner_.end() ? 0 : it->second;
    device_total = used_;
  }
  observer_->OnMemoryChanged(device_, owner, category, owner_total, device_total);
}

int64_t MemoryPool::used_bytes() const {
  absl::MutexLock lock(&mu_);
  return used_;
}

int64_t MemoryPool::bytes(MemoryCategory category) const {
  absl::MutexLock lock(&mu_);
  return by_category_[static_cast<int>(category)];
}

int64_t MemoryPool::owner_bytes(const std::string& owner, MemoryCategory category) const {
  absl::MutexLock lock(&mu_);
  auto it = by_owner_.find({owner, static_cast<int>(category)});
  return it == by_owner_.end() ? 0 : it->second;
}

int64_t MemoryPool::owner_bytes(const std::string& owner) const {
  int64_t total = 0;
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    total += owner_bytes(owner, static_cast<MemoryCategory>(c));
  }
  return total;
}

}  // namespace kbitd::runtime
