// ModelRegistry: load, list, get and unload with the documented state transitions, the errors for
// taken and unknown names and for failed loads, and the device's memory: what a model takes comes
// from its device's pool, several models on one device add up there, and an unload or a failed
// load gives all of it back. Runs the golden test model on a DeviceSet of its own.
#include "server/model_registry.h"

#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util/test_models.h"

namespace kbitd::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr const char* kLlama = "llama/fp32";

class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }
  void TearDown() override { Stop(); }

  // A registry over devices of its own, as the daemon makes them at start.
  void Start(const runtime::DeviceSet::Options& device_options) {
    devices_ = kbitd::test::MakeTestDevices(device_options);
    pool_ = devices_->host_pool();
    workers_ = std::make_unique<DeviceWorkers>(devices_->devices());
    auto root = ModelRoot::Create(kbitd::test::TestModelPath());
    ASSERT_TRUE(root.ok()) << root.status();
    ModelRegistry::Options options{.root = *root};
    options.devices = devices_.get();
    options.workers = workers_.get();
    options.engine.kv_cache_tokens = 64;
    options.engine.kv_block_size = 4;
    options.unload_grace = absl::Seconds(5);
    options.on_state_change = [this](const std::string& name, v1::ModelState state) {
      absl::MutexLock lock(&mu_);
      transitions_.push_back(name + ":" + v1::ModelState_Name(state));
      if (on_state_) on_state_(name, state);
    };
    registry_ = std::make_unique<ModelRegistry>(std::move(options));
  }
  void Stop() {
    if (registry_ != nullptr) registry_->UnloadAll(absl::ZeroDuration());
    registry_.reset();
    workers_.reset();
    pool_.reset();
    devices_.reset();
  }

  // Calls `start` with a reply callback and waits for its reply (the registry's calls report
  // through callbacks, on their own threads).
  template <typename T>
  static absl::StatusOr<T> Await(
      const std::function<void(std::function<void(absl::StatusOr<T>)>)>& start) {
    absl::Notification done;
    absl::StatusOr<T> result;
    start([&](absl::StatusOr<T> reply) {
      result = std::move(reply);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }
  absl::StatusOr<v1::ModelInfo> Load(const std::string& name, const std::string& path = kLlama) {
    v1::LoadModelRequest request;
    request.set_name(name);
    request.set_path(path);
    return Await<v1::ModelInfo>([&](auto done) { registry_->Load(request, std::move(done)); });
  }
  absl::StatusOr<v1::UnloadModelResponse> Unload(const std::string& name) {
    return Await<v1::UnloadModelResponse>(
        [&](auto done) { registry_->Unload(name, std::move(done)); });
  }

  std::vector<std::string> Transitions() {
    absl::MutexLock lock(&mu_);
    return transitions_;
  }
  std::vector<std::string> ListedNames() const {
    std::vector<std::string> names;
    for (const v1::ModelInfo& info : registry_->List()) {
      names.push_back(info.name() + ":" + v1::ModelState_Name(info.state()));
    }
    return names;
  }
  // Bytes a model's ModelInfo reports on every device.
  static int64_t ReportedBytes(const v1::ModelInfo& info) {
    int64_t total = 0;
    for (const v1::DeviceMemory& m : info.memory()) {
      total += m.weight_bytes() + m.kv_cache_bytes() + m.workspace_bytes();
    }
    return total;
  }

  std::unique_ptr<runtime::DeviceSet> devices_;
  std::shared_ptr<runtime::MemoryPool> pool_;
  std::unique_ptr<DeviceWorkers> workers_;
  std::unique_ptr<ModelRegistry> registry_;
  absl::Mutex mu_;
  std::vector<std::string> transitions_ ABSL_GUARDED_BY(mu_);
  std::function<void(const std::string&, v1::ModelState)> on_state_ ABSL_GUARDED_BY(mu_);
};

TEST_F(ModelRegistryTest, LoadThenUnloadGoesThroughEveryStateAndReturnsTheMemory) {
  EXPECT_EQ(pool_->used_bytes(), 0);
  absl::StatusOr<v1::ModelInfo> info = Load("a");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->name(), "a");
  EXPECT_EQ(info->state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(info->parameter_count(), 123200);
  EXPECT_GT(info->kv_cache_bytes(), 0);
  // Everything the model holds is in the device's pool, under its name.
  EXPECT_GT(pool_->used_bytes(), info->weight_bytes());
  EXPECT_EQ(pool_->owner_bytes("a"), pool_->used_bytes());
  EXPECT_EQ(pool_->owner_bytes("a", runtime::MemoryCategory::kWeights), info->weight_bytes());
  EXPECT_EQ(pool_->owner_bytes("a", runtime::MemoryCategory::kKvCache), info->kv_cache_bytes());

  absl::StatusOr<std::shared_ptr<ServedModel>> served = registry_->Get("a");
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ((*served)->worker, *workers_->For(runtime::Device::Cpu()));
  served->reset();  // a request's reference would keep the model until it ends
  EXPECT_THAT(ListedNames(), ElementsAre("a:MODEL_STATE_READY"));
  const int64_t held = pool_->used_bytes();

  absl::StatusOr<v1::UnloadModelResponse> unloaded = Unload("a");
  ASSERT_TRUE(unloaded.ok()) << unloaded.status();
  EXPECT_EQ(unloaded->freed_bytes(), held);
  EXPECT_EQ(unloaded->cancelled_requests(), 0);
  EXPECT_EQ(pool_->used_bytes(), 0);
  EXPECT_EQ(registry_->Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry_->List().empty());
  EXPECT_THAT(Transitions(), ElementsAre("a:MODEL_STATE_LOADING", "a:MODEL_STATE_READY",
                                         "a:MODEL_STATE_UNLOADING", "a:MODEL_STATE_UNSPECIFIED"));
}

// A client that unloads as soon as the load replied: the load thread, still running the reply
// callback here, must already have let go of the model, or its memory outlives the unload.
TEST_F(ModelRegistryTest, AnUnloadRightAfterTheLoadsReplyFreesTheMemory) {
  v1::LoadModelRequest request;
  request.set_name("a");
  request.set_path(kLlama);
  absl::Notification done;
  absl::Status unloaded;
  int64_t used_after_unload = -1;
  registry_->Load(request, [&](absl::StatusOr<v1::ModelInfo> info) {
    EXPECT_TRUE(info.ok()) << info.status();
    unloaded = Unload("a").status();
    used_after_unload = pool_->used_bytes();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_TRUE(unloaded.ok()) << unloaded;
  EXPECT_EQ(used_after_unload, 0);
}

TEST_F(ModelRegistryTest, ATakenNameIsAlreadyExistsAndTakesNoMemory) {
  ASSERT_TRUE(Load("a").ok());
  const int64_t held = pool_->used_bytes();
  absl::StatusOr<v1::ModelInfo> again = Load("a", "mistral/fp32");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("'a'"));
  EXPECT_EQ(pool_->used_bytes(), held);
  // The loaded one is untouched.
  absl::StatusOr<v1::ModelInfo> info = registry_->Info("a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->path(), kLlama);
  EXPECT_EQ(info->state(), v1::MODEL_STATE_READY);
}

TEST_F(ModelRegistryTest, ADryRunPlansWithoutLoadingOrRegistering) {
  v1::LoadModelRequest request;
  request.set_name("planned");
  request.set_path(kLlama);
  request.set_dry_run(true);
  request.mutable_quantization()->set_load_in_4bit(true);
  request.mutable_quantization()->set_bnb_4bit_quant_type("nf4");
  const int64_t used = pool_->used_bytes();
  absl::StatusOr<v1::ModelInfo> plan =
      Await<v1::ModelInfo>([&](auto done) { registry_->Load(request, std::move(done)); });
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->state(), v1::MODEL_STATE_UNSPECIFIED);
  EXPECT_EQ(plan->architecture(), "LlamaForCausalLM");
  ASSERT_FALSE(plan->placement_plan().empty());
  int64_t planned = 0;
  for (const v1::PlacedModule& m : plan->placement_plan()) planned += m.bytes();
  ASSERT_EQ(plan->memory_size(), 1);
  EXPECT_EQ(plan->memory(0).device(), "cpu");
  EXPECT_EQ(plan->memory(0).weight_bytes(), planned);
  EXPECT_EQ(plan->weight_bytes(), planned);
  EXPECT_EQ(pool_->used_bytes(), used);
  EXPECT_TRUE(ListedNames().empty());

  // The load it planned: the same bytes and modules.
  request.set_dry_run(false);
  absl::StatusOr<v1::ModelInfo> loaded =
      Await<v1::ModelInfo>([&](auto done) { registry_->Load(request, std::move(done)); });
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->weight_bytes(), plan->weight_bytes());
  ASSERT_EQ(loaded->placement_plan_size(), plan->placement_plan_size());
  EXPECT_EQ(loaded->placement_plan(0).module(), plan->placement_plan(0).module());

  // A plan that does not fit fails as the load would; a taken name does not matter to a plan.
  request.set_dry_run(true);
  (*request.mutable_placement()->mutable_max_memory())["cpu"] = "1000";
  absl::StatusOr<v1::ModelInfo> too_big =
      Await<v1::ModelInfo>([&](auto done) { registry_->Load(request, std::move(done)); });
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  EXPECT_EQ(ListedNames(), (std::vector<std::string>{"planned:MODEL_STATE_READY"}));
}

TEST_F(ModelRegistryTest, UnknownModelsAreNotFound) {
  EXPECT_EQ(Unload("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Info("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(registry_->Info("nope").status().message(), HasSubstr("'nope'"));
}

TEST_F(ModelRegistryTest, BadNamesAndPathsAreRefusedBeforeLoading) {
  EXPECT_EQ(Load(".hidden").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Load("a", "../models").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Load("a", "no/such/model").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry_->List().empty());
  EXPECT_TRUE(Transitions().empty());  // none of them got as far as LOADING
}

TEST_F(ModelRegistryTest, AFailedLoadIsKeptWithItsReasonFreesAllAndCanBeReplaced) {
  // A folder inside the root that is no checkpoint (no config.json).
  absl::StatusOr<v1::ModelInfo> failed = Load("a", "llama");
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(failed.status().message(), HasSubstr("loading model 'a' from llama"));
  EXPECT_EQ(pool_->used_bytes(), 0);
  absl::StatusOr<std::shared_ptr<ServedModel>> get = registry_->Get("a");
  EXPECT_EQ(get.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(get.status().message(), HasSubstr("failed to load"));
  EXPECT_THAT(ListedNames(), ElementsAre("a:MODEL_STATE_FAILED"));
  EXPECT_FALSE(registry_->Info("a")->error().empty());

  // A FAILED name may be loaded again, which replaces it.
  absl::StatusOr<v1::ModelInfo> loaded = Load("a");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->error().empty());
  EXPECT_THAT(ListedNames(), ElementsAre("a:MODEL_STATE_READY"));
  EXPECT_THAT(Transitions(), ElementsAre("a:MODEL_STATE_LOADING", "a:MODEL_STATE_FAILED",
                                         "a:MODEL_STATE_LOADING", "a:MODEL_STATE_READY"));
}

TEST_F(ModelRegistryTest, UnloadingAFailedModelRemovesIt) {
  ASSERT_FALSE(Load("a", "llama").ok());
  absl::StatusOr<v1::UnloadModelResponse> unloaded = Unload("a");
  ASSERT_TRUE(unloaded.ok()) << unloaded.status();
  EXPECT_EQ(unloaded->freed_bytes(), 0);
  EXPECT_TRUE(registry_->List().empty());
  EXPECT_EQ(registry_->Get("a").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelRegistryTest, UnloadWhileLoadingIsRefused) {
  absl::Notification tried;
  absl::Status during_load;
  {
    absl::MutexLock lock(&mu_);
    // Runs as the registry announces LOADING, before the load has started.
    on_state_ = [&](const std::string& name, v1::ModelState state) {
      if (state != v1::MODEL_STATE_LOADING) return;
      registry_->Unload(name, [&](absl::StatusOr<v1::UnloadModelResponse> response) {
        during_load = response.status();
        tried.Notify();
      });
    };
  }
  absl::StatusOr<v1::ModelInfo> loaded = Load("a");
  ASSERT_TRUE(tried.HasBeenNotified());
  EXPECT_EQ(during_load.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(during_load.message(), HasSubstr("loading"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(registry_->Info("a")->state(), v1::MODEL_STATE_READY);
}

TEST_F(ModelRegistryTest, TwoModelsOnOneDeviceAddUpInItsPool) {
  absl::StatusOr<v1::ModelInfo> a = Load("a");
  ASSERT_TRUE(a.ok()) << a.status();
  const int64_t a_bytes = pool_->owner_bytes("a");
  absl::StatusOr<v1::ModelInfo> b = Load("b", "qwen2/nf4-dq");
  ASSERT_TRUE(b.ok()) << b.status();
  const int64_t b_bytes = pool_->owner_bytes("b");
  EXPECT_GT(a_bytes, 0);
  EXPECT_GT(b_bytes, 0);
  EXPECT_EQ(pool_->owner_bytes("a"), a_bytes);  // b's load took nothing of a's
  EXPECT_EQ(pool_->used_bytes(), a_bytes + b_bytes);
  // What each ModelInfo reports is what the pool counts for it.
  EXPECT_EQ(ReportedBytes(*registry_->Info("a")), a_bytes);
  EXPECT_EQ(ReportedBytes(*registry_->Info("b")), b_bytes);
  // Both run on the device's one worker.
  EXPECT_EQ((*registry_->Get("a"))->worker, (*registry_->Get("b"))->worker);
  EXPECT_THAT(ListedNames(), ElementsAre("a:MODEL_STATE_READY", "b:MODEL_STATE_READY"));

  ASSERT_TRUE(Unload("a").ok());
  EXPECT_EQ(pool_->owner_bytes("a"), 0);
  EXPECT_EQ(pool_->used_bytes(), b_bytes);
  ASSERT_TRUE(Unload("b").ok());
  EXPECT_EQ(pool_->used_bytes(), 0);
}

TEST_F(ModelRegistryTest, ModelsOfOneDeviceShareItsMaxMemory) {
  ASSERT_TRUE(Load("a").ok());
  const int64_t one_model = pool_->used_bytes();
  Stop();
  // A device that holds one such model but not two.
  Start({.max_memory = {{"cpu", one_model + one_model / 2}}});
  ASSERT_TRUE(Load("a").ok());
  EXPECT_EQ(pool_->used_bytes(), one_model);
  absl::StatusOr<v1::ModelInfo> b = Load("b");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("max_memory"));
  // The failed load gave back all it took; the first model is untouched.
  EXPECT_EQ(pool_->owner_bytes("b"), 0);
  EXPECT_EQ(pool_->used_bytes(), one_model);
  EXPECT_THAT(ListedNames(), ElementsAre("a:MODEL_STATE_READY", "b:MODEL_STATE_FAILED"));
}

}  // namespace
}  // namespace kbitd::server
