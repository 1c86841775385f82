// A small fork-join thread pool for the CPU backend: ParallelFor splits a range into contiguous
// chunks, runs them on the workers and the calling thread, and returns when all are done. One
// caller at a time (the engine's thread).
//
// A decode step makes ~10 ParallelFor calls per layer, each only tens of microseconds long, so
// waking sleeping workers through the kernel (futex) on every call cost more than the work on a
// 2-core VM (bench/cpu_decode: 2 threads were no faster than 1). Workers therefore spin on an
// atomic generation counter for a short while after each task (kSpinMicros) and only then sleep;
// the caller publishes a task with one atomic increment and wakes sleepers only if there are any.
// The same hybrid spin-then-sleep scheme as OpenMP runtimes' KMP_BLOCKTIME and ggml's workers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kbitd::runtime {

class ThreadPool {
 public:
  // How long an idle worker spins before it sleeps. Long enough to bridge the gaps between the
  // linears of one decode step, short enough that an idle daemon sleeps almost at once.
  static constexpr int64_t kSpinMicros = 200;
  static constexpr int kChunksPerThread = 4;

  // num_threads counts the caller; 0 = std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }
  // Calls fn(begin, end) over [0, n) in contiguous, disjoint chunks of at least `grain` items
  // (at most kChunksPerThread per thread). Threads claim chunks as they go, so a thread that the
  // OS preempts (a shared VM) delays the call by one chunk, not by its whole share.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();  // claims and runs chunks of the current task until none is left
  // Spins, then sleeps, until generation_ differs from `seen` or the pool stops; returns it.
  uint64_t AwaitGeneration(uint64_t seen);

  int num_threads_;
  std::vector<std::thread> workers_;
  // The task of the current generation. Written by the caller only while every worker is idle
  // (pending_ == 0), published by the release increment of generation_.
  const std::function<void(int64_t, int64_t)>* task_ = nullptr;
  int64_t task_n_ = 0;
  int task_chunks_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers that have not finished the current generation
  std::atomic<int> next_chunk_{0};
  std::atomic<bool> stop_{false};
  // std::mutex rather than absl::Mutex: Debian's Abseil is not built for ThreadSanitizer, and this
  // pool's lock-free handshake is exactly what TSAN should check (tests/runtime/thread_pool_test).
  std::mutex mu_;
  std::condition_variable wake_;
  int sleepers_ = 0;  // guarded by mu_
};

}  // namespace kbitd::runtime
