// Kernel latency sampling: the engine reports every kernel kind of the forward and the sampling to
// its KernelObserver on sampled steps (the first, then 1 in kernel_timing_interval) and nothing on
// the others.
#include <map>

#include "gtest/gtest.h"
#include "runtime/engine.h"
#include "runtime/kernel_observer.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

class RecordingObserver : public KernelObserver {
 public:
  void OnKernel(KernelKind kind, double seconds) override {
    ++calls[kind];
    EXPECT_GE(seconds, 0.0);
  }
  std::map<KernelKind, int> calls;
};

std::shared_ptr<Model> Load(const std::string& relative) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/" + relative;
  auto model = LoadModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

// An engine timing 1 step in `interval`, with `prompt` added as greedy sequence 1.
std::unique_ptr<Engine> MakeEngine(std::shared_ptr<Model> model, KernelObserver* observer,
                                   int32_t interval, std::vector<int32_t> prompt) {
  Engine::Options options;
  options.kv_cache_tokens = 256;
  options.kernel_observer = observer;
  options.kernel_timing_interval = interval;
  auto engine = Engine::Create(std::move(model), kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return nullptr;
  absl::Status added = (*engine)->AddSequence(1, std::move(prompt), {.temperature = 0.0f});
  EXPECT_TRUE(added.ok()) << added;
  return added.ok() ? std::move(*engine) : nullptr;
}

TEST(KernelTimingTest, SampledStepsReportEveryKindOthersNothing) {
  // llama/nf4 keeps lm_head dense (transformers' default skip list), so both matmul kinds run.
  auto model = Load("llama/nf4");
  ASSERT_NE(model, nullptr);
  RecordingObserver observer;
  auto engine = MakeEngine(model, &observer, 3, {3, 14, 15, 92});
  ASSERT_NE(engine, nullptr);
  const int64_t layers = model->config().num_hidden_layers;

  // Step 0 (prefill) is sampled.
  ASSERT_TRUE(engine->Step({{1, 4}}).ok());
  std::map<KernelKind, int> want = {{KernelKind::kQuantizedMatmul, 7 * layers},
                                    {KernelKind::kDenseMatmul, 1},
                                    {KernelKind::kAttention, layers},
                                    {KernelKind::kNorm, 2 * layers + 1},
                                    {KernelKind::kRope, layers},
                                    {KernelKind::kActivation, layers},
                                    {KernelKind::kEmbedding, 1},
                                    {KernelKind::kSampling, 1}};
  EXPECT_EQ(observer.calls, want);
  EXPECT_EQ(want.size(), static_cast<size_t>(kNumKernelKinds));

  // Steps 1 and 2 are not timed; step 3 is.
  observer.calls.clear();
  ASSERT_TRUE(engine->Step({{1, 1}}).ok());
  ASSERT_TRUE(engine->Step({{1, 1}}).ok());
  EXPECT_TRUE(observer.calls.empty());
  ASSERT_TRUE(engine->Step({{1, 1}}).ok());
  EXPECT_EQ(observer.calls, want);
}

TEST(KernelTimingTest, DenseModelReportsOnlyDenseMatmulAndIntervalIsValidated) {
  auto model = Load("llama/fp32");
  ASSERT_NE(model, nullptr);
  RecordingObserver observer;
  auto engine = MakeEngine(model, &observer, 1, {3, 14});
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->Step({{1, 2}}).ok());
  EXPECT_EQ(observer.calls.count(KernelKind::kQuantizedMatmul), 0u);
  EXPECT_EQ(observer.calls[KernelKind::kDenseMatmul], 7 * model->config().num_hidden_layers + 1);

  Engine::Options bad;
  bad.kernel_timing_interval = 0;
  auto engine_or = Engine::Create(model, kbitd::test::HostBackend(), bad);
  EXPECT_EQ(engine_or.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(engine_or.status().message()).find("kernel_timing_interval"),
            std::string::npos);
}

TEST(KernelTimingTest, KindNames) {
  EXPECT_STREQ(KernelKindName(KernelKind::kQuantizedMatmul), "quantized_matmul");
  EXPECT_STREQ(KernelKindName(KernelKind::kSampling), "sampling");
}

}  // namespace
}  // namespace kbitd::runtime
