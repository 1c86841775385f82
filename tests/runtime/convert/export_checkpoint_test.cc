// ExportCheckpoint: a loaded (quantized) model written back as a plain checkpoint loads again
// with weights byte-equal to Model::DequantizeLinear and the same logits.
#include "runtime/convert/export_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

namespace fs = std::filesystem;

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

// "<tmp>/export_checkpoint_test/<name>/out" in a fresh folder of its own: ctest runs test cases
// in parallel processes, and each must see only its own staging folders.
std::string FreshDir(const std::string& name) {
  const std::string folder = testing::TempDir() + "/export_checkpoint_test/" + name;
  fs::remove_all(folder);
  fs::create_directories(folder);
  return folder + "/out";
}

// Whether a staged ".out.partial-XXXXXX" folder was left next to `out`.
bool HasStagingFolders(const std::string& out) {
  for (const auto& entry : fs::directory_iterator(fs::path(out).parent_path())) {
    if (entry.path().filename().string().find(".partial-") != std::string::npos) return true;
  }
  return false;
}

std::shared_ptr<Model> Load(const std::string& path) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = path;
  auto model = LoadModel(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

// Logits of the last prompt token, then `steps` greedy tokens.
std::pair<std::vector<float>, std::vector<int32_t>> RunGreedy(std::shared_ptr<Model> model,
                                                              int steps) {
  Engine::Options options;
  options.keep_last_logits = true;  // LastLogits is read below
  options.kv_cache_tokens = 256;
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  const std::vector<int32_t> prompt = {5, 17, 42, 99, 7, 250, 3};
  EXPECT_TRUE((*engine)->AddSequence(1, prompt, SamplingParams{.temperature = 0.0f}).ok());
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  for (int i = 0; i < steps; ++i) {
    auto step = (*engine)->Step({{1, i == 0 ? static_cast<int32_t>(prompt.size()) : 1}});
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) break;
    if (i == 0) logits = (*engine)->LastLogits(1);
    tokens.push_back((*step)[0].token);
  }
  return {logits, tokens};
}

class ExportCheckpointTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ExportCheckpointTest, ReloadsWithDequantizedWeightsAndSameLogits) {
  const std::string source = kModels + "/" + GetParam();
  auto quantized = Load(source);
  ASSERT_NE(quantized, nullptr);
  const std::string out = FreshDir(GetParam().substr(0, GetParam().find('/')) + "_" +
                                   GetParam().substr(GetParam().find('/') + 1));
  auto summary = ExportCheckpoint(*quantized, source, out, {.dtype = ScalarType::kFloat32});
  ASSERT_TRUE(summary.ok()) << summary.status();
  const int64_t layers = quantized->config().num_hidden_layers;
  EXPECT_EQ(summary->converted, 7 * layers + (quantized->config().tie_word_embeddings ? 0 : 1));
  EXPECT_FALSE(HasStagingFolders(out));

  // A plain checkpoint: no quantization_config, dtype recorded, tokenizer carried over.
  auto config = ReadJsonObjectFile(out + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->Find("quantization_config"), nullptr);
  const JsonValue* dtype =
      config->Find("dtype") ? config->Find("dtype") : config->Find("torch_dtype");
  ASSERT_NE(dtype, nullptr);
  EXPECT_EQ(dtype->string_value(), "float32");
  EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));

  auto exported = Load(out);
  ASSERT_NE(exported, nullptr);
  EXPECT_FALSE(exported->config().quantization.has_value());
  auto file = SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  for (const std::string& name : quantized->LinearNames()) {
    const LinearWeight* reloaded = exported->FindLinear(name);
    ASSERT_NE(reloaded, nullptr) << name;
    EXPECT_TRUE(reloaded->is_dense()) << name;
    std::vector<uint8_t> expected, actual;
    std::vector<int64_t> shape, reloaded_shape;
    ASSERT_TRUE(quantized->DequantizeLinear(name, ScalarType::kFloat32, &expected, &shape).ok());
    ASSERT_TRUE(
        exported->DequantizeLinear(name, ScalarType::kFloat32, &actual, &reloaded_shape).ok());
    EXPECT_EQ(shape, reloaded_shape) << name;
    EXPECT_TRUE(expected == actual) << name << " differs from Model::DequantizeLinear";
    if (name == "lm_head" && quantized->config().tie_word_embeddings) continue;
    auto stored = (*file)->Get(name + ".weight");
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_EQ(stored->data.size(), expected.size()) << name;
    EXPECT_EQ(std::memcmp(stored->data.data(), expected.data(), expected.size()), 0) << name;
  }

  auto [want_logits, want_tokens] = RunGreedy(quantized, 6);
  auto [got_logits, got_tokens] = RunGreedy(exported, 6);
  ASSERT_EQ(want_logits.size(), got_logits.size());
  ASSERT_FALSE(want_logits.empty());
  float max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < want_logits.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(want_logits[i] - got_logits[i]));
    max_abs = std::max(max_abs, std::abs(want_logits[i]));
  }
  EXPECT_LE(max_diff, 1e-4f * std::max(1.0f, max_abs)) << GetParam();
  EXPECT_EQ(want_tokens, got_tokens) << GetParam();
}

// A loaded GPTQ model exported in float32 is the generator's dequantized twin, tensor for tensor
// (Model::DequantizeLinear is exact; tests/data/gptq).
TEST(ExportCheckpointGptqTest, WritesTheDequantizedFloat32Twin) {
  const std::string gptq = std::string(KBITD_TEST_DATA_DIR) + "/gptq";
  for (const std::string name : {"llama_gptq4", "llama_gptq3"}) {
    SCOPED_TRACE(name);
    LoadOptions options;
    options.devices = &kbitd::test::TestDevices();
    options.path = gptq + "/" + name;
    options.require_tokenizer = false;
    auto model = LoadModel(options);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::string out = FreshDir("gptq_" + name);
    auto summary = ExportCheckpoint(**model, options.path, out, {.dtype = ScalarType::kFloat32});
    ASSERT_TRUE(summary.ok()) << summary.status();
    auto got = Checkpoint::Open(out);
    auto want = Checkpoint::Open(gptq + "/" + name + "_dequant");
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ((*got)->TensorNames(), (*want)->TensorNames());
    for (const std::string& tensor : (*want)->TensorNames()) {
      auto a = (*got)->Get(tensor);
      auto b = (*want)->Get(tensor);
      ASSERT_TRUE(a.ok()) << tensor;
      ASSERT_EQ(a->data.size(), b->data.size()) << tensor;
      EXPECT_EQ(std::memcmp(a->data.data(), b->data.data(), a->data.size()), 0) << tensor;
    }
  }
}

// 4-bit formats (LLM.int8's outlier decomposition computes differently from its dense export, so
// its logits are not compared; its weights are, below).
INSTANTIATE_TEST_SUITE_P(FourBit, ExportCheckpointTest,
                         ::testing::Values("qwen2/nf4-dq", "llama/nf4", "mistral/fp4"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST(ExportCheckpointDtypeTest, Bfloat16AndDefaultDtype) {
  const std::string source = kModels + "/llama/int8";
  auto model = Load(source);
  ASSERT_NE(model, nullptr);
  // Default: the model's original dtype (float32 for the test models).
  EXPECT_EQ(ExportDtype(*model, std::nullopt), model->config().torch_dtype);
  const std::string out = FreshDir("int8_bf16");
  auto summary = ExportCheckpoint(*model, source, out, {.dtype = ScalarType::kBFloat16});
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto file = SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  for (const std::string& name : model->LinearNames()) {
    std::vector<uint8_t> expected;
    std::vector<int64_t> shape;
    ASSERT_TRUE(model->DequantizeLinear(name, ScalarType::kBFloat16, &expected, &shape).ok());
    auto stored = (*file)->Get(name + ".weight");
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->dtype, ScalarType::kBFloat16);
    ASSERT_EQ(stored->data.size(), expected.size()) << name;
    EXPECT_EQ(std::memcmp(stored->data.data(), expected.data(), expected.size()), 0) << name;
  }
  auto norm = (*file)->Get("model.norm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->dtype, ScalarType::kBFloat16);
  auto config = ReadJsonObjectFile(out + "/config.json");
  ASSERT_TRUE(config.ok());
  const JsonValue* dtype =
      config->Find("dtype") ? config->Find("dtype") : config->Find("torch_dtype");
  ASSERT_NE(dtype, nullptr);
  EXPECT_EQ(dtype->string_value(), "bfloat16");
  EXPECT_NE(Load(out), nullptr);
}

TEST(ExportCheckpointErrorsTest, ExistingDestinationAndCancellationLeaveNothingNew) {
  const std::string source = kModels + "/qwen2/nf4-dq";
  auto model = Load(source);
  ASSERT_NE(model, nullptr);
  const std::string out = FreshDir("existing");
  fs::create_directories(out);
  auto summary = ExportCheckpoint(*model, source, out, {});
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kAlreadyExists) << summary.status();
  EXPECT_TRUE(fs::is_empty(out));

  const std::string cancelled = FreshDir("cancelled");
  int calls = 0;
  ExportCheckpointOptions options;
  options.progress = [&](const ConvertProgress&) { return ++calls < 3; };
  summary = ExportCheckpoint(*model, source, cancelled, options);
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kCancelled) << summary.status();
  EXPECT_EQ(calls, 3);
  EXPECT_FALSE(fs::exists(cancelled));
  EXPECT_FALSE(HasStagingFolders(cancelled));

  summary = ExportCheckpoint(*model, source, FreshDir("bad_dtype"), {.dtype = ScalarType::kInt8});
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument) << summary.status();
}

}  // namespace
}  // namespace kbitd::runtime
