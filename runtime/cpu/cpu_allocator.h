// Host memory for the CPU device's MemoryPool: 64-byte aligned (AVX-512 loads of a row never split
// a cache line) and zero-initialised, so a fresh KV cache or workspace holds no stale data.
#pragma once

#include <memory>

#include "runtime/memory_pool.h"

namespace kbitd::runtime {

std::unique_ptr<DeviceAllocator> NewCpuAllocator();

}  // namespace kbitd::runtime
