#include "runtime/thread_pool.h"

#include <algorithm>

namespace kbitd::runtime {
namespace {

void ChunkBounds(int64_t n, int chunks, int index, int64_t* begin, int64_t* end) {
  *begin = n * index / chunks;
  *end = n * (index + 1) / chunks;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(1, num_threads);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(int64_t, int64_t)>* task;
    int64_t n;
    int chunks;
    {
      absl::MutexLock lock(&mu_);
      struct Wait {
        ThreadPool* pool;
        uint64_t seen;
      } wait{this, seen};
      mu_.Await(absl::Condition(
          +[](Wait* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return w->pool->stop_ || w->pool->generation_ != w->seen;
          },
          &wait));
      if (stop_) return;
      seen = generation_;
      task = task_;
      n = task_n_;
      chunks = task_chunks_;
    }
    if (index < chunks) {
      int64_t begin, end;
      ChunkBounds(n, chunks, index, &begin, &end);
      (*task)(begin, end);
    }
    absl::MutexLock lock(&mu_);
    --pending_;
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int chunks = static_cast<int>(std::min<int64_t>(num_threads_, (n + grain - 1) / grain));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    task_ = &fn;
    task_n_ = n;
    task_chunks_ = chunks;
    pending_ = num_threads_ - 1;
    ++generation_;
  }
  int64_t begin, end;
  ChunkBounds(n, chunks, 0, &begin, &end);
  fn(begin, end);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* pending) { return *pending == 0; }, &pending_));
  task_ = nullptr;
}

}  // namespace kbitd::runtime
