#include "runtime/convert/checkpoint_output.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/quantization_config_json.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  std::string dir = testing::TempDir() + "/checkpoint_output_test/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

size_t CountEntries(const std::string& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(StagedFolderTest, CommitsAtomicallyAndCleansUpOtherwise) {
  const std::string parent = FreshDir("staged");
  {
    auto staged = StagedFolder::Create(parent + "/out");
    ASSERT_TRUE(staged.ok()) << staged.status();
    std::ofstream((*staged)->path() + "/file") << "x";
    EXPECT_FALSE(fs::exists(parent + "/out"));
    EXPECT_THAT((*staged)->path(), HasSubstr("/.out.partial-"));
  }  // not committed
  EXPECT_EQ(CountEntries(parent), 0u);

  auto staged = StagedFolder::Create(parent + "/out/");
  ASSERT_TRUE(staged.ok());
  std::ofstream((*staged)->path() + "/file") << "x";
  ASSERT_TRUE((*staged)->Commit().ok());
  EXPECT_TRUE(fs::exists(parent + "/out/file"));
  EXPECT_EQ(CountEntries(parent), 1u);

  EXPECT_EQ(StagedFolder::Create(parent + "/out").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(StagedFolder::Create(parent + "/no/such/out").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ShardedCheckpointWriterTest, WritesOneFileOrIndexedShards) {
  std::vector<float> v(100, 1.0f);
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(v.data()), 400);
  for (uint64_t max : {uint64_t{1} << 30, uint64_t{900}}) {
    const std::string dir = FreshDir("sharded_" + std::to_string(max));
    ShardedCheckpointWriter::Options options;
    options.max_shard_bytes = max;
    auto writer = ShardedCheckpointWriter::Create(dir, options);
    ASSERT_TRUE(writer.ok());
    for (const char* name : {"a", "b", "c", "d", "e"}) {
      ASSERT_TRUE((*writer)->BeginGroup(400).ok());
      ASSERT_TRUE((*writer)->Add(name, ScalarType::kFloat32, {100}, bytes).ok());
    }
    ASSERT_TRUE((*writer)->Finish().ok());
    auto checkpoint = Checkpoint::Open(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    EXPECT_EQ((*checkpoint)->TensorNames().size(), 5u);
    EXPECT_EQ((*checkpoint)->shards()[0]->metadata()[0].second, "pt");
    if (max == 900) {
      EXPECT_EQ((*writer)->num_shards(), 3);  // a+b, c+d, e
      EXPECT_TRUE(fs::exists(dir + "/model-00003-of-00003.safetensors"));
      std::ifstream in(dir + "/model.safetensors.index.json");
      std::string index((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_EQ(index,
                "{\n  \"metadata\": {\n    \"total_size\": 2000\n  },\n  \"weight_map\": {\n"
                "    \"a\": \"model-00001-of-00003.safetensors\",\n"
                "    \"b\": \"model-00001-of-00003.safetensors\",\n"
                "    \"c\": \"model-00002-of-00003.safetensors\",\n"
                "    \"d\": \"model-00002-of-00003.safetensors\",\n"
                "    \"e\": \"model-00003-of-00003.safetensors\"\n  }\n}\n");
      EXPECT_EQ(CountEntries(dir), 4u);
    } else {
      EXPECT_EQ(CountEntries(dir), 1u);
      EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
    }
  }
}

TEST(CopyAuxiliaryFilesTest, CopiesSideFilesButNoWeightsOrConfig) {
  const std::string from = FreshDir("aux_from");
  const std::string to = FreshDir("aux_to");
  for (const char* name :
       {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json",
        "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
        "model.gguf", ".hidden"}) {
    std::ofstream(from + "/" + name) << name;
  }
  fs::create_directories(from + "/subdir");
  ASSERT_TRUE(CopyAuxiliaryFiles(from, to).ok());
  std::set<std::string> copied;
  for (const auto& entry : fs::directory_iterator(to)) copied.insert(entry.path().filename());
  EXPECT_EQ(copied, (std::set<std::string>{"generation_config.json", "tokenizer.json",
                                           "tokenizer.model", "tokenizer_config.json"}));
}

// transformers writes exactly this block (bnb-spec §7.1); tests/data/kbitq/bnb_nf4_dq/config.json
// was written by transformers 5.17 itself.
TEST(QuantizationConfigJsonTest, MatchesWhatTransformersWrites) {
  QuantizationConfig config;
  config.load_in_4bit = true;
  config.bnb_4bit_quant_type = "nf4";
  config.bnb_4bit_use_double_quant = true;
  config.bnb_4bit_compute_dtype = ScalarType::kBFloat16;
  JsonValue wrapper =
      JsonValue::MakeObject({{"quantization_config", QuantizationConfigToJson(config)}});
  std::string text = WriteHfConfigJson(wrapper);
  std::ifstream in(std::string(KBITD_TEST_DATA_DIR) + "/kbitq/bnb_nf4_dq/config.json");
  std::string transformers((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The block as it appears inside transformers' file (same indentation: one level deep).
  std::string block = text.substr(text.find("\"quantization_config\""));
  block = block.substr(0, block.rfind('}', block.size() - 3) + 1);
  EXPECT_THAT(transformers, HasSubstr(block));
  EXPECT_EQ(QuantizationConfigToJson(config).object().size(), 13u);

  config.llm_int8_skip_modules = std::vector<std::string>{"lm_head", "mlp.gate"};
  EXPECT_THAT(QuantizationConfigToJson(config).Write(),
              HasSubstr("\"llm_int8_skip_modules\": [\"lm_head\", \"mlp.gate\"]"));
  EXPECT_THAT(QuantizationConfigToJson(config).Write(), HasSubstr("\"llm_int8_threshold\": 6.0"));
}

}  // namespace
}  // namespace kbitd::runtime
