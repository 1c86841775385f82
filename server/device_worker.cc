#include "server/device_worker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kbitd::server {

DeviceWorker::DeviceWorker() : thread_([this] { Loop(); }) {}

DeviceWorker::~DeviceWorker() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void DeviceWorker::Add(std::shared_ptr<Scheduler> scheduler) {
  absl::MutexLock lock(&mu_);
  schedulers_.push_back(std::move(scheduler));
  ++wakeups_;
}

void DeviceWorker::Remove(const Scheduler* scheduler) {
  absl::MutexLock lock(&mu_);
  std::erase_if(schedulers_, [&](const auto& s) { return s.get() == scheduler; });
  auto not_current = [this, scheduler]()
                         ABSL_SHARED_LOCKS_REQUIRED(mu_) { return current_ != scheduler; };
  mu_.Await(absl::Condition(&not_current));
}

void DeviceWorker::Wake() {
  absl::MutexLock lock(&mu_);
  ++wakeups_;
}

void DeviceWorker::Loop() {
  uint64_t seen = 0;
  // Raw pointers: schedulers_ alone owns the schedulers, so once Remove returns the worker holds
  // no reference that would keep an unloaded model's engine and memory alive. Each is used only
  // after checking, under mu_, that it is still in schedulers_, and Remove waits while it is
  // current_.
  auto snapshot = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Scheduler*> raw;
    for (const auto& s : schedulers_) raw.push_back(s.get());
    return raw;
  };
  while (true) {
    std::vector<Scheduler*> schedulers;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this, &seen]()
                      ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || wakeups_ != seen; };
      mu_.Await(absl::Condition(&wake));
      if (stop_) return;
      seen = wakeups_;
      schedulers = snapshot();
    }
    bool busy = true;
    while (busy) {
      busy = false;
      for (Scheduler* scheduler : schedulers) {
        {
          absl::MutexLock lock(&mu_);
          if (stop_) return;
          if (std::none_of(schedulers_.begin(), schedulers_.end(),
                           [scheduler](const auto& s) { return s.get() == scheduler; })) {
            continue;  // removed meanwhile
          }
          current_ = scheduler;
        }
        if (scheduler->HasWork()) {
          (void)scheduler->Step();  // failures are reported to the requests and logged
          busy = true;
        }
        absl::MutexLock lock(&mu_);
        current_ = nullptr;
      }
      absl::MutexLock lock(&mu_);
      if (schedulers_.size() != schedulers.size() || wakeups_ != seen) {
        seen = wakeups_;
        schedulers = snapshot();
        busy = true;
      }
    }
  }
}

DeviceWorkers::DeviceWorkers(const std::vector<runtime::Device>& devices) {
  for (const runtime::Device& device : devices) {
    workers_.emplace_back(device, std::make_unique<DeviceWorker>());
  }
}

absl::StatusOr<DeviceWorker*> DeviceWorkers::For(const runtime::Device& device) const {
  for (const auto& [d, worker] : workers_) {
    if (d == device) return worker.get();
  }
  return absl::NotFoundError(absl::StrCat("no worker runs ", device.ToString()));
}

}  // namespace kbitd::server
