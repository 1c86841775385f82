#include "runtime/cpu/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

namespace kbitd::runtime {
namespace {

void ChunkBounds(int64_t n, int chunks, int index, int64_t* begin, int64_t* end) {
  *begin = n * index / chunks;
  *end = n * (index + 1) / chunks;
}

// Spin-wait hint; keeps a spinning core from starving its SMT sibling and saves power.
inline void CpuRelax() { _mm_pause(); }

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(1, num_threads);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_.notify_all();
  }
  for (std::thread& t : workers_) t.join();
}

uint64_t ThreadPool::AwaitGeneration(uint64_t seen) {
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int spins = 1;; ++spins) {
    const uint64_t g = generation_.load(std::memory_order_acquire);
    if (g != seen || stop_.load(std::memory_order_acquire)) return g;
    if (spins % 64 != 0 || std::chrono::steady_clock::now() < spin_until) {
      CpuRelax();
      continue;
    }
    std::unique_lock<std::mutex> lock(mu_);
    ++sleepers_;
    // The caller increments generation_ before it takes mu_ to signal, so checking under mu_
    // cannot miss a wake-up.
    while (generation_.load(std::memory_order_acquire) == seen &&
           !stop_.load(std::memory_order_acquire)) {
      wake_.wait(lock);
    }
    --sleepers_;
  }
}

void ThreadPool::RunChunks() {
  for (int chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed); chunk < task_chunks_;
       chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed)) {
    int64_t begin, end;
    ChunkBounds(task_n_, task_chunks_, chunk, &begin, &end);
    (*task_)(begin, end);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    seen = AwaitGeneration(seen);
    if (stop_.load(std::memory_order_acquire)) return;
    RunChunks();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int chunks = static_cast<int>(
      std::min<int64_t>(int64_t{num_threads_} * kChunksPerThread, (n + grain - 1) / grain));
  if (chunks <= 1 || num_threads_ == 1) {
    fn(0, n);
    return;
  }
  // Every worker is idle here (the previous call waited for pending_ == 0).
  task_ = &fn;
  task_n_ = n;
  task_chunks_ = chunks;
  next_chunk_.store(0, std::memory_order_relaxed);
  pending_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (sleepers_ > 0) wake_.notify_all();
  }
  RunChunks();
  // A worker may have been descheduled (more threads than cores): after a short spin, yield the
  // core to it instead of burning the time slice it needs.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 4096) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace kbitd::runtime
