// Engine behaviour on the golden llama model: batching invariance, chunked prefill, KV
// accounting, reproducible sampling and clear errors for bad requests.
#include "runtime/engine.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

std::shared_ptr<Model> LoadModelAt(const std::string& relative) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/" + relative;
  auto model = LoadModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

std::shared_ptr<Model> LoadNf4() { return LoadModelAt("qwen2/nf4-dq"); }

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<Model> model, int64_t kv_tokens = 1024) {
  Engine::Options options;
  options.kv_cache_tokens = kv_tokens;
  options.kv_block_size = 4;
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

std::vector<int32_t> Prompt(int length, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < length; ++i) p.push_back((i * 37 + salt * 11 + 5) % 384);
  return p;
}

SamplingParams Sampled(uint64_t seed) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 50;
  p.top_p = 0.95f;
  p.seed = seed;
  p.top_logprobs = 3;
  return p;
}

// Generates `n` tokens for one sequence alone, prefill in one chunk.
std::vector<int32_t> GenerateAlone(std::shared_ptr<Model> model, const std::vector<int32_t>& prompt,
                                   const SamplingParams& params, int n) {
  auto engine = MakeEngine(model);
  EXPECT_TRUE(engine->AddSequence(1, prompt, params).ok());
  std::vector<int32_t> out;
  int32_t chunk = static_cast<int32_t>(prompt.size());
  for (int i = 0; i < n; ++i) {
    auto step = engine->Step({{1, i == 0 ? chunk : 1}});
    EXPECT_TRUE(step.ok()) << step.status();
    out.push_back((*step)[0].token);
  }
  return out;
}

class BatchingTest : public ::testing::TestWithParam<std::string> {};

// Every weight format (LLM.int8 included: its outlier columns are chosen per token) gives the
// same tokens batched as alone.
TEST_P(BatchingTest, BatchedDifferentLengthsMatchEachAlone) {
  auto model = LoadModelAt(GetParam());
  const std::vector<std::vector<int32_t>> prompts = {Prompt(3, 1), Prompt(17, 2), Prompt(9, 3)};
  const int kNew = 8;
  std::vector<std::vector<int32_t>> alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    alone.push_back(GenerateAlone(model, prompts[i], Sampled(100 + i), kNew));
  }
  // Together: sequence 1 prefills in chunks of 5 while the others already decode, so prefill
  // chunks and decode tokens share steps.
  auto engine = MakeEngine(model);
  std::map<uint64_t, std::vector<int32_t>> got;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(engine->AddSequence(i, prompts[i], Sampled(100 + i)).ok());
  }
  for (int step = 0; step < 40; ++step) {
    std::vector<SequenceWork> work;
    for (uint64_t id = 0; id < prompts.size(); ++id) {
      if (got[id].size() >= kNew) continue;
      int32_t remaining = engine->RemainingPromptTokens(id);
      int32_t chunk = remaining > 0 ? std::min(remaining, id == 1 ? 5 : 100) : 1;
      work.push_back({id, chunk});
    }
    if (work.empty()) break;
    auto out = engine->Step(work);
    ASSERT_TRUE(out.ok()) << out.status();
    for (const SampledToken& t : *out) {
      got[t.sequence_id].push_back(t.token);
      EXPECT_EQ(t.top.size(), 3u);
      EXPECT_LE(t.logprob, 0.0f);
    }
  }
  for (uint64_t id = 0; id < prompts.size(); ++id)
    EXPECT_EQ(got[id], alone[id]) << "sequence " << id;
}

INSTANTIATE_TEST_SUITE_P(Formats, BatchingTest,
                         ::testing::Values("qwen2/nf4-dq", "llama/int8", "mistral/fp32",
                                           "llama/fp4"));

TEST(EngineTest, SameSeedSameTokensDifferentSeedDiffers) {
  auto model = LoadNf4();
  auto a = GenerateAlone(model, Prompt(6, 4), Sampled(7), 12);
  auto b = GenerateAlone(model, Prompt(6, 4), Sampled(7), 12);
  auto c = GenerateAlone(model, Prompt(6, 4), Sampled(8), 12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// Plain greedy sequences are sampled by the backend (8 bytes a row back); with their logits kept,
// by the host sampler. Both give the same tokens and logprobs, batched with a sampled sequence
// (which keeps the whole step on the host path) or alone.
TEST(EngineTest, GreedyOnTheBackendMatchesTheHostSampler) {
  auto model = LoadNf4();
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<std::vector<SampledToken>> runs;
  for (bool keep_logits : {false, true}) {
    Engine::Options options;
    options.kv_cache_tokens = 1024;
    options.kv_block_size = 4;
    options.keep_last_logits = keep_logits;
    auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_TRUE((*engine)->AddSequence(1, Prompt(5, 1), greedy).ok());
    ASSERT_TRUE((*engine)->AddSequence(2, Prompt(7, 2), greedy).ok());
    std::vector<SampledToken> tokens;
    for (int i = 0; i < 6; ++i) {
      auto step = (*engine)->Step({{1, i == 0 ? 5 : 1}, {2, i == 0 ? 7 : 1}});
      ASSERT_TRUE(step.ok()) << step.status();
      tokens.insert(tokens.end(), step->begin(), step->end());
      EXPECT_EQ((*engine)->LastLogits(1).empty(), !keep_logits);
    }
    runs.push_back(tokens);
  }
  ASSERT_EQ(runs[0].size(), runs[1].size());
  for (size_t i = 0; i < runs[0].size(); ++i) {
    EXPECT_EQ(runs[0][i].sequence_id, runs[1][i].sequence_id);
    EXPECT_EQ(runs[0][i].token, runs[1][i].token) << "token " << i;
    EXPECT_EQ(runs[0][i].logprob, runs[1][i].logprob) << "token " << i;  // same host code
  }
}

TEST(EngineTest, KvBlocksAreReservedAndFreed) {
  auto model = LoadNf4();
  auto engine = MakeEngine(model, /*kv_tokens=*/16);  // 4 blocks of 4
  EXPECT_EQ(engine->kv_blocks_total(), 4);
  EXPECT_EQ(engine->KvBlocksNeeded(5), 2);
  ASSERT_TRUE(engine->AddSequence(1, Prompt(8, 1), Sampled(1)).ok());
  EXPECT_EQ(engine->kv_blocks_free(), 2);
  absl::Status full = engine->AddSequence(2, Prompt(9, 2), Sampled(1));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_FALSE(engine->HasSequence(2));
  ASSERT_TRUE(engine->AddSequence(3, Prompt(8, 3), Sampled(1)).ok());
  EXPECT_EQ(engine->kv_blocks_free(), 0);
  ASSERT_TRUE(engine->Step({{1, 8}, {3, 8}}).ok());
  // Token 9 of either sequence needs a new block: none is free, nothing changes.
  auto step = engine->Step({{1, 1}});
  EXPECT_EQ(step.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine->SequenceLength(1), 9);
  engine->RemoveSequence(3);
  EXPECT_EQ(engine->kv_blocks_free(), 2);
  EXPECT_TRUE(engine->Step({{1, 1}}).ok());
  engine->RemoveSequence(1);
  engine->RemoveSequence(42);  // unknown: no-op
  EXPECT_EQ(engine->kv_blocks_free(), 4);
}

TEST(EngineTest, BadRequestsGiveClearErrors) {
  auto model = LoadNf4();
  Engine::Options options;
  options.max_context = 32;
  options.kv_cache_tokens = 256;
  auto engine_or = Engine::Create(model, kbitd::test::HostBackend(), options);
  ASSERT_TRUE(engine_or.ok());
  auto& engine = *engine_or;
  EXPECT_EQ(engine->max_context(), 32);
  auto expect = [](absl::Status s, absl::StatusCode code, const std::string& text) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(std::string(s.message()).find(text), std::string::npos) << s;
  };
  expect(engine->AddSequence(1, {}, {}), absl::StatusCode::kInvalidArgument, "empty");
  expect(engine->AddSequence(1, Prompt(33, 1), {}), absl::StatusCode::kInvalidArgument,
         "longer than the context of 32");
  expect(engine->AddSequence(1, {1, 384}, {}), absl::StatusCode::kInvalidArgument,
         "outside the vocabulary");
  SamplingParams bad;
  bad.top_p = 0;
  expect(engine->AddSequence(1, {1, 2}, bad), absl::StatusCode::kInvalidArgument, "top_p");
  ASSERT_TRUE(engine->AddSequence(1, {1, 2, 3}, {}).ok());
  expect(engine->AddSequence(1, {1}, {}), absl::StatusCode::kInvalidArgument, "already exists");
  expect(engine->Step({{2, 1}}).status(), absl::StatusCode::kInvalidArgument, "unknown sequence");
  expect(engine->Step({{1, 4}}).status(), absl::StatusCode::kInvalidArgument, "unprocessed");
  expect(engine->Step({{1, 1}, {1, 1}}).status(), absl::StatusCode::kInvalidArgument, "twice");
  EXPECT_EQ(engine->RemainingPromptTokens(1), 3);
  // A sequence can run up to the context and no further.
  ASSERT_TRUE(engine->Step({{1, 3}}).ok());
  for (int i = 3; i < 32; ++i) ASSERT_TRUE(engine->Step({{1, 1}}).ok()) << i;
  expect(engine->Step({{1, 1}}).status(), absl::StatusCode::kInvalidArgument, "context");
  Engine::Options too_long;
  too_long.max_context = 100000;
  expect(Engine::Create(model, kbitd::test::HostBackend(), too_long).status(),
         absl::StatusCode::kInvalidArgument, "max_context");
}

// qwen2/nf4-dq: 2 layers, 2 kv heads of 16, max_position_embeddings 256: 512 bytes a token, so
// one max_context sequence is 128 KiB.
constexpr int64_t kNf4TokenBytes = 512;
constexpr int64_t kNf4SequenceBytes = 256 * kNf4TokenBytes;

// The nf4 model in a pool whose max_memory leaves `spare` bytes beyond its weights.
std::shared_ptr<Model> LoadNf4WithSpare(int64_t spare) {
  const int64_t weights = LoadNf4()->weight_bytes();
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/qwen2/nf4-dq";
  options.placement.max_memory["cpu"] = weights + spare;
  auto model = LoadModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

TEST(EngineKvSizingTest, ExplicitBytesSizeTheCacheAndAreAllocated) {
  auto model = LoadNf4();
  Engine::Options options;
  options.kv_cache_bytes = 3 * kNf4SequenceBytes + 1000;  // the 1000 is less than a block
  options.kv_cache_tokens = 16;                           // loses to the bytes
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->kv_cache_bytes(), 3 * kNf4SequenceBytes);
  EXPECT_EQ((*engine)->kv_cache_tokens(), 3 * 256);
  EXPECT_EQ((*engine)->kv_blocks_total(), 3 * 256 / 16);
  EXPECT_EQ(model->pool()->owner_bytes(model->name(), MemoryCategory::kKvCache),
            3 * kNf4SequenceBytes);
}

TEST(EngineKvSizingTest, DefaultIsAnEighthOfWhatMaxMemoryLeaves) {
  auto model = LoadNf4WithSpare(2 << 20);
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), Engine::Options{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->kv_cache_bytes(), (2 << 20) / 8);
  EXPECT_EQ((*engine)->kv_cache_tokens(), (2 << 20) / 8 / kNf4TokenBytes);
}

TEST(EngineKvSizingTest, DefaultStopsAtMaxBatchSizeSequences) {
  auto model = LoadNf4WithSpare(64 << 20);
  Engine::Options options;
  options.max_batch_size = 2;
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->kv_cache_tokens(), 2 * 256);
}

TEST(EngineKvSizingTest, DefaultIsOneSequenceWhenAnEighthIsLess) {
  auto model = LoadNf4WithSpare(kNf4SequenceBytes + 4096);
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), Engine::Options{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->kv_cache_tokens(), 256);
}

TEST(EngineKvSizingTest, ACacheThatDoesNotFitIsRefusedAndAllocatesNothing) {
  auto model = LoadNf4WithSpare(kNf4SequenceBytes - 1);
  auto refused = Engine::Create(model, kbitd::test::HostBackend(), Engine::Options{});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(),
              ::testing::HasSubstr(absl::StrCat("cpu: the smallest KV cache, one max_context "
                                                "sequence of 256 tokens, needs ",
                                                kNf4SequenceBytes, " bytes (256 tokens) but only ",
                                                kNf4SequenceBytes - 1, " bytes are available")));
  Engine::Options explicit_bytes;
  explicit_bytes.kv_cache_bytes = 2 * kNf4SequenceBytes;
  refused = Engine::Create(model, kbitd::test::HostBackend(), explicit_bytes);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("max_memory"));
  EXPECT_EQ(model->pool()->bytes(MemoryCategory::kKvCache), 0);
}

TEST(EngineKvSizingTest, ExplicitBytesBelowOneSequenceAreInvalid) {
  Engine::Options options;
  options.kv_cache_bytes = kNf4SequenceBytes - 1;
  auto engine = Engine::Create(LoadNf4(), kbitd::test::HostBackend(), options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
  // A shorter max_context needs less.
  options.max_context = 128;
  EXPECT_TRUE(Engine::Create(LoadNf4(), kbitd::test::HostBackend(), options).ok());
}

}  // namespace
}  // namespace kbitd::runtime
