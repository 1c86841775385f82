#include "runtime/cuda/cuda_allocator.h"

#include <cuda_runtime.h>

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "quant/cuda/cuda_check.h"

namespace kbitd::runtime::cuda {
namespace {

constexpr size_t kAlignment = 256;

size_t AlignUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

class CudaArenaAllocator : public DeviceAllocator {
 public:
  CudaArenaAllocator(int device_index, int64_t chunk_bytes)
      : device_index_(device_index), chunk_bytes_(static_cast<size_t>(chunk_bytes)) {}

  ~CudaArenaAllocator() override {
    cudaSetDevice(device_index_);
    for (Chunk& chunk : chunks_) cudaFree(chunk.base);
  }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    const size_t size = AlignUp(bytes);
    absl::MutexLock lock(&mu_);
    if (void* ptr = TakeBestFit(size); ptr != nullptr) return ptr;
    KBITD_RETURN_IF_ERROR(quant::cuda::CudaStatus(cudaSetDevice(device_index_), "cudaSetDevice"));
    const size_t chunk_size = std::max(size, chunk_bytes_);
    void* base = nullptr;
    cudaError_t error = cudaMalloc(&base, chunk_size);
    if (error != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it for later calls
      return quant::cuda::CudaStatus(
          error, absl::StrCat("reserving ", chunk_size, " bytes on cuda:", device_index_));
    }
    Chunk chunk;
    chunk.base = static_cast<char*>(base);
    chunk.size = chunk_size;
    chunk.free[0] = chunk_size;
    chunks_.push_back(std::move(chunk));
    return TakeBestFit(size);
  }

  void Free(void* ptr, size_t bytes) override {
    const size_t size = AlignUp(bytes);
    absl::MutexLock lock(&mu_);
    for (Chunk& chunk : chunks_) {
      char* p = static_cast<char*>(ptr);
      if (p < chunk.base || p >= chunk.base + chunk.size) continue;
      size_t offset = static_cast<size_t>(p - chunk.base);
      size_t length = size;
      // Merge with the free neighbour after, then the one before.
      auto next = chunk.free.find(offset + length);
      if (next != chunk.free.end()) {
        length += next->second;
        chunk.free.erase(next);
      }
      auto after = chunk.free.lower_bound(offset);
      if (after != chunk.free.begin()) {
        auto prev = std::prev(after);
        if (prev->first + prev->second == offset) {
          offset = prev->first;
          length += prev->second;
          chunk.free.erase(prev);
        }
      }
      chunk.free[offset] = length;
      return;
    }
  }

 private:
  struct Chunk {
    char* base = nullptr;
    size_t size = 0;
    std::map<size_t, size_t> free;  // offset -> length, disjoint and never adjacent
  };

  void* TakeBestFit(size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Chunk* best_chunk = nullptr;
    std::map<size_t, size_t>::iterator best;
    for (Chunk& chunk : chunks_) {
      for (auto it = chunk.free.begin(); it != chunk.free.end(); ++it) {
        if (it->second >= size && (best_chunk == nullptr || it->second < best->second)) {
          best_chunk = &chunk;
          best = it;
        }
      }
    }
    if (best_chunk == nullptr) return nullptr;
    const size_t offset = best->first, length = best->second;
    best_chunk->free.erase(best);
    if (length > size) best_chunk->free[offset + size] = length - size;
    return best_chunk->base + offset;
  }

  const int device_index_;
  const size_t chunk_bytes_;
  absl::Mutex mu_;
  std::vector<Chunk> chunks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<DeviceAllocator> NewCudaArenaAllocator(int device_index, int64_t chunk_bytes) {
  return std::make_unique<CudaArenaAllocator>(device_index, chunk_bytes);
}

}  // namespace kbitd::runtime::cuda
