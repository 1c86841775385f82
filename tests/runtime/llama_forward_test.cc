// LlamaForward against a FakeBackend: the forward issues the ops of the transformer in order, and
// when any op fails it returns that op's status and issues nothing after it (a device error
// surfaces at the op that saw it, backend.h), while the next step runs normally.
#include "runtime/llama_forward.h"

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util/fake_backend.h"
#include "tests/test_util/test_models.h"

namespace kbitd::runtime {
namespace {

using ::kbitd::test::FakeBackend;
using ::testing::ElementsAre;

int64_t CountOf(const std::vector<std::string>& ops, const std::string& op) {
  return std::count(ops.begin(), ops.end(), op);
}

class LlamaForwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = kbitd::test::LoadTestModel("llama/fp32", "forward");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto forward = LlamaForward::Create(*model_, backend_);
    ASSERT_TRUE(forward.ok()) << forward.status();
    forward_ = *std::move(forward);
    const ModelConfig& c = model_->config();
    KvCache::Options kv{.num_layers = c.num_hidden_layers,
                        .num_kv_heads = c.num_key_value_heads,
                        .head_dim = c.head_dim,
                        .block_size = 4,
                        .num_blocks = 1};
    auto cache = KvCache::Create(kv, *model_->pool(), model_->name());
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = *std::move(cache);
    // One sequence of three prompt tokens, the last one's logits wanted.
    batch_.tokens = {5, 6, 7};
    batch_.positions = {0, 1, 2};
    batch_.token_sequence = {0, 0, 0};
    batch_.block_tables = {0};
    batch_.max_blocks = 1;
    batch_.logit_rows = {2};
    backend_.ClearOps();  // Create's upload of the RoPE constants is not the step's
  }

  absl::Status Run() { return forward_->Run(batch_, *cache_, &output_); }

  FakeBackend backend_;
  std::shared_ptr<Model> model_;
  std::unique_ptr<LlamaForward> forward_;
  std::unique_ptr<KvCache> cache_;
  ForwardBatch batch_;
  ForwardOutput output_;
};

TEST_F(LlamaForwardTest, IssuesTheOpsOfEveryLayerThenTheHead) {
  ASSERT_TRUE(Run().ok());
  const std::vector<std::string> ops = backend_.ops();
  const int64_t layers = model_->config().num_hidden_layers;
  ASSERT_GE(ops.size(), 6u);
  // The five step inputs go to the device first; the logits come back and are waited for last.
  EXPECT_THAT(std::vector<std::string>(ops.begin(), ops.begin() + 6),
              ElementsAre("CopyTo", "CopyTo", "CopyTo", "CopyTo", "CopyTo", "Embedding"));
  EXPECT_THAT(std::vector<std::string>(ops.end() - 6, ops.end()),
              ElementsAre("GatherRows", "RmsNorm", "RoundTo", "Linear", "CopyTo", "Synchronize"));
  EXPECT_EQ(CountOf(ops, "Prefetch"), layers);
  EXPECT_EQ(CountOf(ops, "Linear"), 7 * layers + 1);  // q k v o gate up down, then lm_head
  EXPECT_EQ(CountOf(ops, "Attention"), layers);
  EXPECT_EQ(output_.logits.size(), static_cast<size_t>(model_->config().vocab_size));
}

TEST_F(LlamaForwardTest, AGreedyBatchSamplesOnTheDeviceAndCopiesTokensNotLogits) {
  batch_.greedy = true;
  ASSERT_TRUE(Run().ok());
  const std::vector<std::string> ops = backend_.ops();
  EXPECT_THAT(std::vector<std::string>(ops.end() - 4, ops.end()),
              ElementsAre("GreedySample", "CopyTo", "CopyTo", "Synchronize"));
  EXPECT_TRUE(output_.logits.empty());
  EXPECT_EQ(output_.tokens.size(), 1u);
  EXPECT_EQ(output_.logprobs.size(), 1u);

  const absl::Status fault = absl::InternalError("GreedySample: device fault");
  backend_.Fail("GreedySample", fault);
  backend_.ClearOps();
  EXPECT_EQ(Run(), fault);
  EXPECT_EQ(backend_.ops().back(), "GreedySample");
}

class LlamaForwardOpFailureTest : public LlamaForwardTest,
                                  public ::testing::WithParamInterface<std::string> {};

TEST_P(LlamaForwardOpFailureTest, ReturnsTheOpsStatusAndStopsThere) {
  const std::string op = GetParam();
  const absl::Status fault = absl::InternalError(op + ": device fault");
  backend_.Fail(op, fault);
  EXPECT_EQ(Run(), fault);
  const std::vector<std::string> ops = backend_.ops();
  ASSERT_FALSE(ops.empty());
  EXPECT_EQ(ops.back(), op);  // nothing was issued after the failing op
  EXPECT_EQ(CountOf(ops, op), 1);

  // The failure leaves nothing behind: the next step runs through.
  backend_.ClearOps();
  EXPECT_TRUE(Run().ok());
  EXPECT_EQ(backend_.ops().back(), "Synchronize");
}

INSTANTIATE_TEST_SUITE_P(EveryOp, LlamaForwardOpFailureTest,
                         ::testing::ValuesIn(FakeBackend::OpNames()),
                         [](const auto& info) { return info.param; });

TEST_F(LlamaForwardTest, AFailureInALaterLayerStopsThatLayer) {
  // The 9th Linear is layer 1's k_proj (7 per layer: q k v o gate up down).
  const absl::Status fault = absl::UnavailableError("Linear: lost the device");
  backend_.Fail("Linear", fault, 9);
  EXPECT_EQ(Run(), fault);
  const std::vector<std::string> ops = backend_.ops();
  EXPECT_EQ(ops.back(), "Linear");
  EXPECT_EQ(CountOf(ops, "Linear"), 9);
  EXPECT_EQ(CountOf(ops, "Prefetch"), 2);
  EXPECT_EQ(CountOf(ops, "Rope"), 1);  // layer 1 never got to its RoPE
}

TEST(LlamaForwardCreateTest, ReturnsTheUploadsStatus) {
  auto model = kbitd::test::LoadTestModel("llama/fp32", "forward_create");
  ASSERT_TRUE(model.ok()) << model.status();
  FakeBackend backend;
  const absl::Status fault = absl::InternalError("CopyTo: out of device memory");
  backend.Fail("CopyTo", fault);
  EXPECT_EQ(LlamaForward::Create(**model, backend).status(), fault);
  const absl::Status sync_fault = absl::InternalError("Synchronize: kernel fault");
  backend.Fail("Synchronize", sync_fault);
  EXPECT_EQ(LlamaForward::Create(**model, backend).status(), sync_fault);
}

TEST(LlamaForwardCreateTest, RefusesABackendOfAnotherDevice) {
  auto model = kbitd::test::LoadTestModel("llama/fp32", "forward_device");
  ASSERT_TRUE(model.ok()) << model.status();
  FakeBackend gpu(Device::Cuda(0));
  absl::StatusOr<std::unique_ptr<LlamaForward>> forward = LlamaForward::Create(**model, gpu);
  EXPECT_EQ(forward.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(forward.status().message(), ::testing::HasSubstr("cuda:0"));
  EXPECT_TRUE(gpu.ops().empty());
}

}  // namespace
}  // namespace kbitd::runtime
