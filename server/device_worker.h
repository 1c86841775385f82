// The one thread that drives the engines of one device (TF Serving's SharedBatchScheduler gives
// each accelerator one batch thread and round-robins over per-model queues). It cycles through the
// schedulers placed on its device, one Step each, and sleeps while none has work. Engines are
// touched by this thread only, so they need no locks. With the CPU backend alone the daemon runs
// one worker. Thread-safe.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/scheduler.h"

namespace kbitd::server {

class DeviceWorker {
 public:
  DeviceWorker();
  ~DeviceWorker();  // stops and joins the thread

  // Starts stepping `scheduler` and wires its wakeup to this worker.
  void Add(std::shared_ptr<Scheduler> scheduler);
  // Stops stepping it; returns once the worker is no longer inside its Step.
  void Remove(const Scheduler* scheduler);
  // New work may be there.
  void Wake();

 private:
  void Loop();

  absl::Mutex mu_;
  std::vector<std::shared_ptr<Scheduler>> schedulers_ ABSL_GUARDED_BY(mu_);
  const Scheduler* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t wakeups_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kbitd::server
