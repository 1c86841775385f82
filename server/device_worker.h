// The one thread that drives the engines of one device (TF Serving's SharedBatchScheduler gives
// each accelerator one batch thread and round-robins over per-model queues). It cycles through the
// schedulers placed on its device, one Step each, and sleeps while none has work. Engines, and the
// device's backend they share, are touched by this thread only, so they need no locks. The daemon
// runs one per device of its DeviceSet (DeviceWorkers). Thread-safe.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "runtime/device.h"
#include "server/scheduler.h"

namespace kbitd::server {

class DeviceWorker {
 public:
  DeviceWorker();
  ~DeviceWorker();  // stops and joins the thread

  // Starts stepping `scheduler` (whose Options.wakeup calls this worker's Wake).
  void Add(std::shared_ptr<Scheduler> scheduler);
  // Stops stepping it; returns once the worker is no longer inside its Step and holds no
  // reference to it (the caller's release can free the model).
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

// One DeviceWorker per device, created at start and stopped (joined) on destruction.
class DeviceWorkers {
 public:
  explicit DeviceWorkers(const std::vector<runtime::Device>& devices);
  // NOT_FOUND naming the device when it has no worker.
  absl::StatusOr<DeviceWorker*> For(const runtime::Device& device) const;

 private:
  std::vector<std::pair<runtime::Device, std::unique_ptr<DeviceWorker>>> workers_;
};

}  // namespace kbitd::server
