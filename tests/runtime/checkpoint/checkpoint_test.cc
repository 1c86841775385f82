#include "runtime/checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/safetensors_writer.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kSharded = std::string(KBITD_TEST_DATA_DIR) + "/safetensors/py_sharded";

// A copy of the Python-written sharded fixture whose index the test may rewrite.
std::string CopyOfSharded(const std::string& name) {
  std::string dir = testing::TempDir() + "/checkpoint_test_" + name;
  fs::remove_all(dir);
  fs::copy(kSharded, dir);
  return dir;
}

void WriteIndex(const std::string& dir, const std::string& json) {
  std::ofstream(dir + "/model.safetensors.index.json", std::ios::trunc) << json;
}

TEST(CheckpointTest, OpensAShardedCheckpointWrittenByPython) {
  auto checkpoint = Checkpoint::Open(kSharded);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& c = **checkpoint;
  EXPECT_TRUE(c.sharded());
  EXPECT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.TensorNames(), (std::vector<std::string>{"lm_head.weight", "model.embed.weight",
                                                       "model.layers.0.w", "model.layers.1.w"}));
  auto embed = c.Get("model.embed.weight");
  ASSERT_TRUE(embed.ok());
  EXPECT_EQ(LoadAsFloat(embed->data.data(), embed->dtype, 7), 7.0f);
  auto w1 = c.Get("model.layers.1.w");
  EXPECT_EQ(LoadAsFloat(w1->data.data(), w1->dtype, 2), -1.0f);
  EXPECT_THAT((*c.ShardOf("lm_head.weight"))->path(), HasSubstr("model-00002-of-00002"));
  EXPECT_EQ(c.TotalBytes(), 32u + 8u + 12u + 16u);
  EXPECT_EQ(c.Get("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(c.Contains("missing"));
}

TEST(CheckpointTest, OpensASingleFileDirectoryOrAFile) {
  std::string dir = testing::TempDir() + "/checkpoint_test_single";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<float> v = {1, 2};
  std::vector<int64_t> shape = {2};
  TensorView view{
      "w", ScalarType::kFloat32, shape, {reinterpret_cast<const uint8_t*>(v.data()), 8}};
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {view}).ok());
  auto from_dir = Checkpoint::Open(dir);
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_FALSE((*from_dir)->sharded());
  EXPECT_TRUE((*from_dir)->Contains("w"));
  auto from_file = Checkpoint::Open(dir + "/model.safetensors");
  ASSERT_TRUE(from_file.ok());
  EXPECT_EQ((*from_file)->dir(), dir);

  fs::remove(dir + "/model.safetensors");
  EXPECT_THAT(Checkpoint::Open(dir).status().message(), HasSubstr("no model.safetensors.index"));
}

TEST(CheckpointTest, RejectsBadIndexes) {
  std::string dir = CopyOfSharded("bad");
  auto error = [&](const std::string& json) {
    WriteIndex(dir, json);
    auto c = Checkpoint::Open(dir);
    return c.ok() ? std::string("OK") : std::string(c.status().message());
  };
  const std::string shard1 = "model-00001-of-00002.safetensors";
  EXPECT_EQ(error(R"({"weight_map":{"model.embed.weight":")" + shard1 + R"("}})"), "OK");
  EXPECT_THAT(error(R"({"weight_map":{"model.gone":")" + shard1 + R"("}})"),
              HasSubstr("tensor \"model.gone\" is missing from its shard"));
  EXPECT_THAT(error(R"({"weight_map":{"lm_head.weight":")" + shard1 + R"("}})"),
              HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(error(R"({"weight_map":{"x":"../model-00001-of-00002.safetensors"}})"),
              HasSubstr("plain file name"));
  EXPECT_THAT(error(R"({"weight_map":{"x":"/etc/passwd"}})"), HasSubstr("plain file name"));
  EXPECT_THAT(error(R"({"weight_map":{"x":".."}})"), HasSubstr("plain file name"));
  EXPECT_THAT(error(R"({"weight_map":{"x":"a\u0000b"}})"), HasSubstr("plain file name"));
  EXPECT_THAT(error(R"({"weight_map":{"x":1}})"), HasSubstr("plain file name"));
  EXPECT_THAT(error(R"({"weight_map":{"x":"model-00009.safetensors"}})"),
              HasSubstr("model-00009.safetensors"));
  EXPECT_THAT(error(R"({"weight_map":[]})"), HasSubstr("\"weight_map\" must be a JSON object"));
  EXPECT_THAT(error(R"({"weight_map":{}})"), HasSubstr("empty"));
  EXPECT_THAT(error(R"({"weight_map":{"a":"x","a":"y"}})"), HasSubstr("duplicate"));
  EXPECT_THAT(error("{"), HasSubstr("model.safetensors.index.json"));
}

TEST(CheckpointTest, ACorruptShardFailsTheCheckpointNamingTheShard) {
  std::string dir = CopyOfSharded("corrupt");
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 1);
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("model-00002-of-00002.safetensors: tensors need"));
}

}  // namespace
}  // namespace kbitd::runtime
