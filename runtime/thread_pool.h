// A small fork-join thread pool for the CPU backend: ParallelFor splits a range into contiguous
// chunks, runs them on the workers and the calling thread, and returns when all are done. One
// caller at a time (the engine's thread); workers sleep on a condition between calls.
#pragma once

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kbitd::runtime {

class ThreadPool {
 public:
  // num_threads counts the caller; 0 = std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }
  // Calls fn(begin, end) over [0, n) in at most num_threads chunks of at least `grain` items.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  const std::function<void(int64_t, int64_t)>* task_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t task_n_ ABSL_GUARDED_BY(mu_) = 0;
  int task_chunks_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kbitd::runtime
