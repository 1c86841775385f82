// runtime/cpu/thread_pool.h: every index is covered exactly once for any range and grain, calls run
// on several threads at once, and the pool keeps working after its workers fell asleep.
#include "runtime/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

TEST(ThreadPoolTest, CoversTheRangeOnceForAnyGrain) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 5, 12, 13, 1000, 4099}) {
    for (int64_t grain : {1, 2, 7, 64, 5000}) {
      std::vector<int> hits(n, 0);
      pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
        EXPECT_LT(b, e);
        EXPECT_TRUE(e - b >= std::min<int64_t>(grain, n) / 2 || e == n) << b << ".." << e;
        for (int64_t i = b; i < e; ++i) ++hits[i];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << "n " << n << " grain " << grain;
    }
  }
}

TEST(ThreadPoolTest, ManyBackToBackCallsLoseNothing) {
  ThreadPool pool(4);
  std::atomic<int64_t> total{0};
  for (int call = 0; call < 20000; ++call) {
    pool.ParallelFor(64, 1, [&](int64_t b, int64_t e) { total += e - b; });
  }
  EXPECT_EQ(total.load(), 20000 * 64);
}

// Each of the first `threads` chunks waits until that many distinct threads have arrived: this
// only finishes if the workers really run chunks concurrently with the caller.
TEST(ThreadPoolTest, ChunksRunConcurrentlyOnDistinctThreads) {
  constexpr int kThreads = 3;
  ThreadPool pool(kThreads);
  std::mutex mu;
  std::set<std::thread::id> seen;
  std::atomic<int> arrived{0};
  pool.ParallelFor(kThreads, 1, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(std::this_thread::get_id());
    }
    ++arrived;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (arrived.load() < kThreads && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  });
  EXPECT_EQ(arrived.load(), kThreads);
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads));
}

// Idle workers spin for kSpinMicros and then sleep on a condition variable; the next call must
// wake them. The pauses are longer than the spin so that the sleeping path is the one taken.
TEST(ThreadPoolTest, WakesWorkersThatFellAsleep) {
  ThreadPool pool(3);
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::microseconds(ThreadPool::kSpinMicros * 5));
    std::atomic<int64_t> total{0};
    pool.ParallelFor(300, 1, [&](int64_t b, int64_t e) { total += e - b; });
    EXPECT_EQ(total.load(), 300);
  }
}

TEST(ThreadPoolTest, DestroysCleanlyWhileSpinningOrAsleep) {
  for (int i = 0; i < 200; ++i) {
    ThreadPool pool(3);
    if (i % 2 == 0) pool.ParallelFor(10, 1, [](int64_t, int64_t) {});
  }
  ThreadPool pool(2);
  pool.ParallelFor(10, 1, [](int64_t, int64_t) {});
  std::this_thread::sleep_for(std::chrono::microseconds(ThreadPool::kSpinMicros * 5));
}

TEST(ThreadPoolTest, OneThreadRunsInline) {
  ThreadPool pool(1);
  EXPECT_EQ(pool.num_threads(), 1);
  const std::thread::id caller = std::this_thread::get_id();
  pool.ParallelFor(100, 1, [&](int64_t b, int64_t e) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 100);
  });
}

}  // namespace
}  // namespace kbitd::runtime
