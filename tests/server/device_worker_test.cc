// DeviceWorker: the one thread that steps the schedulers of one device. It runs work as soon as a
// scheduler is added or woken, cycles through several models instead of finishing one first,
// stops stepping a removed scheduler (and Remove waits for a step in progress), and stops its
// thread on destruction. The engines run on FakeBackends, which compute nothing, record the ops
// and let a test hold the worker inside a step.
#include "server/device_worker.h"

#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util/fake_backend.h"
#include "tests/test_util/test_models.h"

namespace kbitd::server {
namespace {

using ::kbitd::test::FakeBackend;

// Bounds for waits that end as soon as the condition holds; reaching one is a failure.
constexpr absl::Duration kPatience = absl::Seconds(60);

std::shared_ptr<const runtime::Model> TestModel() {
  static const std::shared_ptr<runtime::Model> model =
      kbitd::test::LoadTestModel("llama/fp32", "worker_test").value();
  return model;
}

// A scheduler for the test model whose engine runs on `backend`; `worker` (may be null) is woken
// on every Enqueue, as the registry wires it.
std::shared_ptr<Scheduler> MakeScheduler(runtime::Backend& backend, DeviceWorker* worker) {
  runtime::Engine::Options engine_options;
  engine_options.kv_cache_tokens = 512;
  engine_options.kv_block_size = 4;
  auto engine = runtime::Engine::Create(TestModel(), backend, engine_options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return nullptr;
  std::shared_ptr<const runtime::Tokenizer> tokenizer(TestModel(), TestModel()->tokenizer());
  Scheduler::Options options;
  if (worker != nullptr) options.wakeup = [worker] { worker->Wake(); };
  return std::make_shared<Scheduler>(*std::move(engine), tokenizer, options);
}

std::shared_ptr<Request> MakeRequest(int32_t max_new_tokens) {
  static std::atomic<uint64_t> next_id{1};
  GenerateParams params;
  params.prompt = {3, 14, 15, 92, 65};
  params.max_new_tokens = max_new_tokens;
  params.sampling.temperature = 0.0f;
  return std::make_shared<Request>(next_id++, std::move(params), absl::Now());
}

TEST(DeviceWorkerTest, RunsWorkOnItsOwnThreadWhenWoken) {
  FakeBackend backend;
  absl::Mutex mu;
  std::set<std::thread::id> threads;
  backend.SetHook([&](const std::string&) {
    absl::MutexLock lock(&mu);
    threads.insert(std::this_thread::get_id());
  });
  DeviceWorker worker;
  std::shared_ptr<Scheduler> scheduler = MakeScheduler(backend, &worker);
  worker.Add(scheduler);
  ASSERT_TRUE(scheduler->Enqueue(MakeRequest(3)).ok());
  ASSERT_TRUE(scheduler->WaitIdle(kPatience));
  const size_t first_ops = backend.ops().size();
  EXPECT_GT(first_ops, 0u);

  // Idle now; a later request wakes it again.
  ASSERT_TRUE(scheduler->Enqueue(MakeRequest(2)).ok());
  ASSERT_TRUE(scheduler->WaitIdle(kPatience));
  EXPECT_GT(backend.ops().size(), first_ops);
  worker.Remove(scheduler.get());
  absl::MutexLock lock(&mu);
  // Engine creation ran here; every step ran on one other thread: the worker's.
  threads.erase(std::this_thread::get_id());
  EXPECT_EQ(threads.size(), 1u);
}

TEST(DeviceWorkerTest, AddingASchedulerWithQueuedWorkStartsIt) {
  FakeBackend backend;
  DeviceWorker worker;
  std::shared_ptr<Scheduler> scheduler = MakeScheduler(backend, nullptr);  // Enqueue wakes nobody
  ASSERT_TRUE(scheduler->Enqueue(MakeRequest(2)).ok());
  worker.Add(scheduler);
  EXPECT_TRUE(scheduler->WaitIdle(kPatience));
  worker.Remove(scheduler.get());
}

// Two models on one device: the worker steps both in turn, so a short request on one model is
// not held up until a long one on the other has finished.
TEST(DeviceWorkerTest, ModelsSharingTheWorkerTakeTurns) {
  FakeBackend long_backend, short_backend;
  DeviceWorker worker;
  std::shared_ptr<Scheduler> long_model = MakeScheduler(long_backend, &worker);
  std::shared_ptr<Scheduler> short_model = MakeScheduler(short_backend, &worker);
  // Read on the worker thread inside the long model's steps, so it sees the short model's state
  // between two of them, with no timing involved.
  int long_steps = 0;
  int long_steps_when_short_done = -1;
  // The long model's first step waits until both models are added: 200 fake steps take a few
  // milliseconds, which a preempted test thread could otherwise let pass before adding the short
  // one.
  absl::Notification both_added;
  long_backend.SetHook([&](const std::string& op) {
    if (op != "Synchronize") return;  // the end of one step
    if (long_steps == 0) both_added.WaitForNotification();
    ++long_steps;
    if (long_steps_when_short_done < 0 && short_model->InFlight() == 0) {
      long_steps_when_short_done = long_steps;
    }
  });
  ASSERT_TRUE(long_model->Enqueue(MakeRequest(200)).ok());
  ASSERT_TRUE(short_model->Enqueue(MakeRequest(2)).ok());
  worker.Add(long_model);
  worker.Add(short_model);
  both_added.Notify();
  ASSERT_TRUE(short_model->WaitIdle(kPatience));
  ASSERT_TRUE(long_model->WaitIdle(kPatience));
  worker.Remove(long_model.get());
  worker.Remove(short_model.get());
  EXPECT_GE(long_steps, 200);
  ASSERT_GT(long_steps_when_short_done, 0);
  EXPECT_LT(long_steps_when_short_done, 10);
}

TEST(DeviceWorkerTest, ARemovedSchedulerIsNotSteppedAgain) {
  FakeBackend removed_backend, staying_backend;
  DeviceWorker worker;
  std::shared_ptr<Scheduler> removed = MakeScheduler(removed_backend, &worker);
  std::shared_ptr<Scheduler> staying = MakeScheduler(staying_backend, &worker);
  removed_backend.ClearOps();  // building the engine ran ops on this thread
  worker.Add(removed);
  worker.Add(staying);
  worker.Remove(removed.get());
  // One step would finish this request, and the worker steps every scheduler it has in each
  // round, so it would be done long before the other model's five tokens.
  ASSERT_TRUE(removed->Enqueue(MakeRequest(1)).ok());
  ASSERT_TRUE(staying->Enqueue(MakeRequest(5)).ok());
  ASSERT_TRUE(staying->WaitIdle(kPatience));
  EXPECT_EQ(removed->InFlight(), 1);
  EXPECT_TRUE(removed_backend.ops().empty());
  worker.Remove(staying.get());
}

// Holds the worker inside the next op `backend` runs (so inside a step) until released. Armed
// after the engine is built: building it runs ops on the test thread.
class HeldStep {
 public:
  void HoldNextOp(FakeBackend& backend) {
    backend.SetHook([this](const std::string&) {
      if (entered_.HasBeenNotified()) return;
      entered_.Notify();
      release_.WaitForNotification();
    });
  }
  void WaitUntilInside() { entered_.WaitForNotification(); }
  void Release() { release_.Notify(); }

 private:
  absl::Notification entered_, release_;
};

// What a call blocked on the worker has not done within this bound, it is not going to do before
// the worker is released: the check can only pass wrongly, never fail wrongly.
constexpr absl::Duration kStillBlocked = absl::Milliseconds(50);

TEST(DeviceWorkerTest, RemoveWaitsForTheStepInProgress) {
  FakeBackend backend;
  HeldStep held;
  DeviceWorker worker;
  std::shared_ptr<Scheduler> scheduler = MakeScheduler(backend, &worker);
  held.HoldNextOp(backend);
  worker.Add(scheduler);
  ASSERT_TRUE(scheduler->Enqueue(MakeRequest(50)).ok());
  held.WaitUntilInside();
  absl::Notification removed;
  std::thread remover([&] {
    worker.Remove(scheduler.get());
    removed.Notify();
  });
  EXPECT_FALSE(removed.WaitForNotificationWithTimeout(kStillBlocked));
  held.Release();
  removed.WaitForNotification();
  remover.join();
}

TEST(DeviceWorkerTest, DestructionWaitsForTheStepInProgressThenStops) {
  FakeBackend backend;
  HeldStep held;
  auto worker = std::make_unique<DeviceWorker>();
  // Enqueue wakes nobody (no worker given), so the work is queued before Add wakes the worker:
  // queued after, it could arrive when the worker had already found nothing to do and slept.
  std::shared_ptr<Scheduler> scheduler = MakeScheduler(backend, nullptr);
  held.HoldNextOp(backend);
  ASSERT_TRUE(scheduler->Enqueue(MakeRequest(200)).ok());
  worker->Add(scheduler);
  held.WaitUntilInside();
  absl::Notification destroyed;
  std::thread destroyer([&] {
    worker.reset();
    destroyed.Notify();
  });
  EXPECT_FALSE(destroyed.WaitForNotificationWithTimeout(kStillBlocked));
  held.Release();
  destroyed.WaitForNotification();
  destroyer.join();
}

// Unload frees a model when it drops the last reference after Remove; a reference the worker
// kept would hold the model's memory past the unload's reply.
TEST(DeviceWorkerTest, RemoveLeavesTheWorkerNoReference) {
  FakeBackend busy_backend, idle_backend;
  HeldStep held;
  DeviceWorker worker;
  std::shared_ptr<Scheduler> busy = MakeScheduler(busy_backend, &worker);
  std::shared_ptr<Scheduler> idle = MakeScheduler(idle_backend, &worker);
  held.HoldNextOp(busy_backend);
  worker.Add(busy);
  worker.Add(idle);
  // The worker takes up both schedulers for this round, then is held inside the busy one's step.
  ASSERT_TRUE(busy->Enqueue(MakeRequest(2)).ok());
  held.WaitUntilInside();
  worker.Remove(idle.get());
  EXPECT_EQ(idle.use_count(), 1);
  held.Release();
  EXPECT_TRUE(busy->WaitIdle(kPatience));
  worker.Remove(busy.get());
  EXPECT_EQ(busy.use_count(), 1);
}

TEST(DeviceWorkerTest, IdleWorkerStopsOnDestruction) {
  absl::Notification destroyed;
  std::thread destroyer([&] {
    { DeviceWorker worker; }
    destroyed.Notify();
  });
  EXPECT_TRUE(destroyed.WaitForNotificationWithTimeout(kPatience));
  destroyer.join();
}

TEST(DeviceWorkersTest, OneWorkerPerDeviceAndNotFoundForOthers) {
  DeviceWorkers workers({runtime::Device::Cpu(), runtime::Device::Cuda(1)});
  absl::StatusOr<DeviceWorker*> cpu = workers.For(runtime::Device::Cpu());
  absl::StatusOr<DeviceWorker*> gpu = workers.For(runtime::Device::Cuda(1));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_NE(*cpu, *gpu);
  EXPECT_EQ(*workers.For(runtime::Device::Cpu()), *cpu);
  absl::StatusOr<DeviceWorker*> missing = workers.For(runtime::Device::Cuda(0));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), ::testing::HasSubstr("cuda:0"));
}

}  // namespace
}  // namespace kbitd::server
