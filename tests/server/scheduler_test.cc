// Scheduler deadlines and cancellation, driven step by step from the test thread with a FakeClock
// (no device worker, no sleeps): an expired or cancelled request leaves the batch (or the queue) at
// the next step, frees its KV blocks and is counted with its outcome, while the others go on.
#include "server/scheduler.h"

#include <prometheus/counter.h>

#include "gtest/gtest.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::server {
namespace {

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    runtime::LoadOptions load;
    load.devices = &kbitd::test::TestDevices();
    load.path = kModels + "/llama/fp32";
    auto model = runtime::LoadModel(load);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_NE((*model)->tokenizer(), nullptr);
    std::shared_ptr<const runtime::Tokenizer> tokenizer(*model, (*model)->tokenizer());
    runtime::Engine::Options engine_options;
    engine_options.kv_cache_tokens = 256;
    engine_options.kv_block_size = 4;
    auto engine = runtime::Engine::Create(*model, kbitd::test::HostBackend(), engine_options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto metrics = Metrics::Create({.address = "off"});
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = *std::move(metrics);
    Scheduler::Options options;
    options.limits.max_batch_size = 2;  // a third request has to wait in the queue
    options.clock = &clock_;
    model_metrics_ = metrics_->AddModel("m");
    options.metrics = model_metrics_;
    scheduler_ = std::make_unique<Scheduler>(*std::move(engine), tokenizer, options);
    total_blocks_ = scheduler_->engine().kv_blocks_total();
  }

  // A greedy request that would run for 100 tokens; `deadline` relative to now.
  std::shared_ptr<Request> Add(absl::Duration deadline = absl::InfiniteDuration()) {
    GenerateParams params;
    params.prompt = {3, 14, 15, 92, 65};
    params.max_new_tokens = 100;
    params.sampling.temperature = 0.0f;
    params.deadline = clock_.Now() + deadline;
    auto request = std::make_shared<Request>(next_id_++, std::move(params), clock_.Now());
    EXPECT_TRUE(scheduler_->Enqueue(request).ok());
    return request;
  }

  double Count(RequestOutcome outcome) const {
    return model_metrics_->outcomes[static_cast<int>(outcome)]->Value();
  }
  double Generated() const { return model_metrics_->generated_tokens->Value(); }
  int64_t UsedBlocks() const { return total_blocks_ - scheduler_->engine().kv_blocks_free(); }

  FakeClock clock_;
  std::unique_ptr<Metrics> metrics_;
  std::shared_ptr<ModelMetrics> model_metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  int64_t total_blocks_ = 0;
  uint64_t next_id_ = 1;
};

TEST_F(SchedulerTest, ExpiredRunningRequestLeavesAtTheNextStepAndFreesItsBlocks) {
  auto expiring = Add(absl::Seconds(10));
  auto staying = Add();
  ASSERT_TRUE(scheduler_->Step().ok());  // both admitted and prefilled
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 2);
  const int64_t blocks_of_two = UsedBlocks();
  EXPECT_GT(blocks_of_two, 0);

  clock_.Advance(absl::Seconds(9));  // not yet
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 2);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 0);

  clock_.Advance(absl::Seconds(1));  // the deadline is now
  const double generated = Generated();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 1);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 1);
  EXPECT_LT(UsedBlocks(), blocks_of_two);
  // The expired request got no token in that step; the other one did.
  EXPECT_EQ(Generated(), generated + 1);
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(Generated(), generated + 2);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 0);
}

TEST_F(SchedulerTest, CancelledRequestLeavesAtTheNextStepOthersContinue) {
  auto cancelled = Add();
  auto staying = Add();
  ASSERT_TRUE(scheduler_->Step().ok());
  ASSERT_TRUE(scheduler_->Step().ok());
  const int64_t blocks_of_two = UsedBlocks();

  cancelled->Cancel();
  const double generated = Generated();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 1);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 1);
  EXPECT_LT(UsedBlocks(), blocks_of_two);
  EXPECT_EQ(Generated(), generated + 1);

  staying->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 0);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 2);
  EXPECT_EQ(UsedBlocks(), 0);
  EXPECT_FALSE(scheduler_->HasWork());
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 0);
}

TEST_F(SchedulerTest, QueuedRequestsExpireOrCancelWithoutEverRunning) {
  auto first = Add();
  auto second = Add();
  auto queued_expiring = Add(absl::Seconds(5));  // max_batch_size 2: it waits
  auto queued_cancelled = Add();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 4);
  const int64_t blocks_of_two = UsedBlocks();

  clock_.Advance(absl::Seconds(5));
  queued_cancelled->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 2);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 1);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 1);
  EXPECT_EQ(UsedBlocks(), blocks_of_two);  // the running two still hold theirs, nobody else

  // Once a running slot frees, nothing is left in the queue to take it.
  first->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 1);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 2);
}

TEST_F(SchedulerTest, PassedDeadlineCountsAsDeadlineThoughGrpcCancelsTheCallToo) {
  auto running = Add(absl::Seconds(10));
  auto staying = Add();
  auto queued = Add(absl::Seconds(10));  // max_batch_size 2: it waits
  ASSERT_TRUE(scheduler_->Step().ok());
  ASSERT_TRUE(scheduler_->Step().ok());

  clock_.Advance(absl::Seconds(10));
  // gRPC cancels a call when its deadline passes, so the cancel callback has run as well.
  running->Cancel();
  queued->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 1);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 2);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 0);
}

TEST_F(SchedulerTest, CancelMomentsBeforeTheDeadlineIsTheClientsDeadline) {
  auto running = Add(absl::Seconds(10));
  ASSERT_TRUE(scheduler_->Step().ok());
  // The client's deadline timer started before the request reached the daemon, so the client
  // cancels a little before the daemon's copy of the deadline passes.
  clock_.Advance(absl::Seconds(10) - absl::Milliseconds(5));
  running->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 0);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 1);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 0);
}

TEST_F(SchedulerTest, ClientCancelBeforeTheDeadlineCountsAsCancelled) {
  auto running = Add(absl::Seconds(10));
  auto staying = Add();
  auto queued = Add(absl::Seconds(10));
  ASSERT_TRUE(scheduler_->Step().ok());

  clock_.Advance(absl::Seconds(9));
  running->Cancel();
  queued->Cancel();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 1);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 2);
  EXPECT_EQ(Count(RequestOutcome::kDeadlineExceeded), 0);
}

TEST_F(SchedulerTest, AbortAllEndsQueuedAndRunningAtTheNextStep) {
  Add();
  Add();
  Add();
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->AbortAll(absl::OkStatus()), 3);
  EXPECT_EQ(scheduler_->InFlight(), 3);  // nothing happens before the worker's next step
  ASSERT_TRUE(scheduler_->Step().ok());
  EXPECT_EQ(scheduler_->InFlight(), 0);
  EXPECT_EQ(Count(RequestOutcome::kCancelled), 3);
  EXPECT_EQ(UsedBlocks(), 0);
}

}  // namespace
}  // namespace kbitd::server
