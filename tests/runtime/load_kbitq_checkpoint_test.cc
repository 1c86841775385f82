// A checkpoint written by `kbitq quantize` (runtime/convert/quantize_checkpoint.h) loads
// pre-quantized and computes exactly what quantizing the same plain checkpoint on load computes:
// the same bytes go through bitsandbytes' state-dict keys and back.
#include <cstring>
#include <filesystem>

#include "gtest/gtest.h"
#include "runtime/convert/quantize_checkpoint.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

namespace fs = std::filesystem;
const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

std::vector<float> Logits(std::shared_ptr<Model> model, const std::vector<int32_t>& prompt) {
  Engine::Options options;
  options.keep_last_logits = true;  // LastLogits is read below
  options.kv_cache_tokens = 256;
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  SamplingParams greedy;
  greedy.temperature = 0;
  EXPECT_TRUE((*engine)->AddSequence(1, prompt, greedy).ok());
  std::vector<float> all;
  for (int step = 0; step < 4; ++step) {  // prefill, then three decode steps
    auto s = (*engine)->Step({{1, step == 0 ? static_cast<int32_t>(prompt.size()) : 1}});
    EXPECT_TRUE(s.ok()) << s.status();
    const std::vector<float>& logits = (*engine)->LastLogits(1);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

struct Case {
  const char* name;
  QuantizationConfig config;
};

std::vector<Case> Cases() {
  QuantizationConfig nf4_dq;
  nf4_dq.load_in_4bit = true;
  nf4_dq.bnb_4bit_quant_type = "nf4";
  nf4_dq.bnb_4bit_use_double_quant = true;
  QuantizationConfig fp4_bf16_storage = nf4_dq;
  fp4_bf16_storage.bnb_4bit_quant_type = "fp4";
  fp4_bf16_storage.bnb_4bit_use_double_quant = false;
  fp4_bf16_storage.bnb_4bit_quant_storage = ScalarType::kBFloat16;
  QuantizationConfig int8;
  int8.load_in_8bit = true;
  return {{"nf4_dq", nf4_dq}, {"fp4_bf16_storage", fp4_bf16_storage}, {"int8", int8}};
}

class LoadKbitqCheckpointTest : public ::testing::TestWithParam<int> {};

TEST_P(LoadKbitqCheckpointTest, EqualsQuantizeOnLoad) {
  const Case c = Cases()[GetParam()];
  const std::string plain = kModels + "/qwen2/fp32";
  const std::string out =
      (fs::path(::testing::TempDir()) / (std::string("kbitq_") + c.name)).string();
  fs::remove_all(out);
  QuantizeCheckpointOptions options;
  options.config = c.config;
  auto summary = QuantizeCheckpoint(plain, out, options);
  ASSERT_TRUE(summary.ok()) << summary.status();

  LoadOptions prequantized;

  prequantized.devices = &kbitd::test::TestDevices();
  prequantized.path = out;
  auto from_kbitq = LoadModel(prequantized);
  ASSERT_TRUE(from_kbitq.ok()) << from_kbitq.status();
  LoadOptions on_load;
  on_load.devices = &kbitd::test::TestDevices();
  on_load.path = plain;
  on_load.quantization = c.config;
  auto quantized_on_load = LoadModel(on_load);
  ASSERT_TRUE(quantized_on_load.ok()) << quantized_on_load.status();

  EXPECT_EQ((*from_kbitq)->weight_bytes(), (*quantized_on_load)->weight_bytes());
  const std::vector<int32_t> prompt = {3, 17, 42, 99, 7, 250, 11};
  std::vector<float> a = Logits(*from_kbitq, prompt), b = Logits(*quantized_on_load, prompt);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << c.name;
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Formats, LoadKbitqCheckpointTest, ::testing::Range(0, 3),
                         [](const auto& info) { return std::string(Cases()[info.param].name); });

}  // namespace
}  // namespace kbitd::runtime
