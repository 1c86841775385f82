// GPU memory for a CUDA device's MemoryPool. Serving must not call cudaMalloc/cudaFree per tensor
// (each is a device-wide synchronisation and fragments the heap), so the allocator reserves large
// chunks and sub-allocates from them: best fit over a free list per chunk, 256-byte aligned
// (what vectorised loads and cuBLASLt want), neighbours merged on free. Chunks are kept until the
// allocator is destroyed, so a model unloaded and loaded again reuses them; the pool's byte
// accounting (max_memory, per-model bytes) is exact regardless. Memory is not zeroed.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime::cuda {

// Sub-allocates device `device_index`'s memory from chunks of at least `chunk_bytes`.
std::unique_ptr<DeviceAllocator> NewCudaArenaAllocator(int device_index, int64_t chunk_bytes);

}  // namespace kbitd::runtime::cuda
