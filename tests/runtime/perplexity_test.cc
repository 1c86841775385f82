// runtime/perplexity.h against transformers' logits at every position (tests/data/models goldens)
// and against the engine scoring each window's prefixes one by one.
#include "runtime/perplexity.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

template <typename T>
std::vector<T> GoldenTensor(const std::string& name) {
  auto file = SafetensorsFile::Open(kModels + "/llama/goldens.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  auto view = (*file)->Get(name);
  EXPECT_TRUE(view.ok()) << view.status();
  std::vector<T> out(view->data.size() / sizeof(T));
  std::memcpy(out.data(), view->data.data(), view->data.size());
  return out;
}

std::shared_ptr<Model> LoadFp32() {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/llama/fp32";
  auto model = LoadModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

double LogSoftmaxAt(const float* logits, int64_t vocab, int32_t target) {
  double max = logits[0], sum = 0;
  for (int64_t v = 1; v < vocab; ++v) max = std::max<double>(max, logits[v]);
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - max);
  return logits[target] - max - std::log(sum);
}

TEST(PerplexityTest, OneWindowEqualsTransformersNll) {
  auto model = LoadFp32();
  const int64_t vocab = model->config().vocab_size;
  std::vector<int32_t> ids = GoldenTensor<int32_t>("prompt2.tokens");
  std::vector<float> golden = GoldenTensor<float>("fp32.cpu.prompt2.all_logits");
  double expected = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    expected -= LogSoftmaxAt(golden.data() + i * vocab, vocab, ids[i + 1]);
  }
  PerplexityOptions options;
  options.window = static_cast<int32_t>(ids.size());  // longer than the text: one window
  auto sum = ScoreTokens(*model, kbitd::test::HostBackend(), ids, options);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(sum->tokens, static_cast<int64_t>(ids.size()) - 1);
  EXPECT_NEAR(sum->nll, expected, 1e-5 * expected);
  EXPECT_NEAR(sum->Perplexity(), std::exp(expected / sum->tokens), 1e-6 * sum->Perplexity());
}

// Each window restarts the context: token j of a window is scored from the window's own prefix
// only. The engine gives those logits when the prefix is its whole prompt.
TEST(PerplexityTest, WindowsRestartTheContext) {
  auto model = LoadFp32();
  const int64_t vocab = model->config().vocab_size;
  std::vector<int32_t> ids = GoldenTensor<int32_t>("prompt2.tokens");
  ids.resize(23);  // 22 predicted tokens: windows of 8, 8 and 6
  constexpr int32_t kWindow = 8;
  Engine::Options engine_options;
  engine_options.keep_last_logits = true;  // LastLogits is read below
  engine_options.kv_cache_tokens = 64;
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  SamplingParams greedy;
  greedy.temperature = 0;
  double expected = 0;
  uint64_t next_id = 1;
  for (size_t start = 0; start + 1 < ids.size(); start += kWindow) {
    for (size_t end = start + 1; end <= std::min(start + kWindow, ids.size() - 1); ++end) {
      std::vector<int32_t> prefix(ids.begin() + start, ids.begin() + end);
      const uint64_t id = next_id++;
      ASSERT_TRUE((*engine)->AddSequence(id, prefix, greedy).ok());
      ASSERT_TRUE((*engine)->Step({{id, static_cast<int32_t>(prefix.size())}}).ok());
      expected -= LogSoftmaxAt((*engine)->LastLogits(id).data(), vocab, ids[end]);
      (*engine)->RemoveSequence(id);
    }
  }
  PerplexityOptions options;
  options.window = kWindow;
  int windows = 0;
  options.progress = [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, 22);
    EXPECT_EQ(done, std::min<int64_t>(22, (++windows) * kWindow));
    return true;
  };
  auto sum = ScoreTokens(*model, kbitd::test::HostBackend(), ids, options);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(windows, 3);
  EXPECT_EQ(sum->tokens, 22);
  EXPECT_NEAR(sum->nll, expected, 1e-5 * expected);
}

TEST(PerplexityTest, BadInputIsRejected) {
  auto model = LoadFp32();
  PerplexityOptions options;
  options.window = 4;
  EXPECT_EQ(ScoreTokens(*model, kbitd::test::HostBackend(), {5}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto out_of_vocab =
      ScoreTokens(*model, kbitd::test::HostBackend(),
                  {1, 2, static_cast<int32_t>(model->config().vocab_size)}, options);
  EXPECT_EQ(out_of_vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out_of_vocab.status().message().find("token 2"), std::string::npos);
  options.window = static_cast<int32_t>(model->config().max_position_embeddings) + 1;
  EXPECT_EQ(ScoreTokens(*model, kbitd::test::HostBackend(), {1, 2, 3}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.window = 0;
  EXPECT_EQ(ScoreTokens(*model, kbitd::test::HostBackend(), {1, 2, 3}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PerplexityTest, ProgressCanCancel) {
  auto model = LoadFp32();
  PerplexityOptions options;
  options.window = 2;
  options.progress = [](int64_t, int64_t) { return false; };
  EXPECT_EQ(
      ScoreTokens(*model, kbitd::test::HostBackend(), {1, 2, 3, 4, 5}, options).status().code(),
      absl::StatusCode::kCancelled);
}

TEST(PerplexityTest, ComputeDtypeOverrideMustBeFloatingPoint) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/llama/fp32";
  options.compute_dtype = ScalarType::kUInt8;
  EXPECT_EQ(LoadModel(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.compute_dtype = ScalarType::kBFloat16;
  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->compute_dtype(), ScalarType::kBFloat16);
}

}  // namespace
}  // namespace kbitd::runtime
