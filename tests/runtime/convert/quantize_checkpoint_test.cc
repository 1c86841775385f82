#include "runtime/convert/quantize_checkpoint.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/convert/checkpoint_output.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// tests/data/kbitq: a tiny bf16 Llama ("base") and what transformers 5.17 + bitsandbytes 0.50.2
// saved after quantizing it (tools/golden/kbitq_golden.py make).
const std::string kData = std::string(KBITD_TEST_DATA_DIR) + "/kbitq";

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A new empty folder per use: ctest runs the test cases in parallel processes.
std::string FreshDir(const std::string& name) {
  std::string dir = testing::TempDir() + "/quantize_checkpoint_test/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// An output path whose (fresh, private) parent holds nothing else.
std::string OutDir(const std::string& name) { return FreshDir(name) + "/out"; }

QuantizeCheckpointOptions FourBit(const std::string& type, bool double_quant,
                                  ScalarType compute = ScalarType::kFloat32) {
  QuantizeCheckpointOptions options;
  options.config.load_in_4bit = true;
  options.config.bnb_4bit_quant_type = type;
  options.config.bnb_4bit_use_double_quant = double_quant;
  options.config.bnb_4bit_compute_dtype = compute;
  return options;
}

QuantizeCheckpointOptions Int8() {
  QuantizeCheckpointOptions options;
  options.config.load_in_8bit = true;
  return options;
}

// Nothing at the destination and no staging folder left next to it.
void ExpectNothingLeft(const std::string& out) {
  EXPECT_FALSE(fs::exists(out));
  for (const auto& entry : fs::directory_iterator(fs::path(out).parent_path())) {
    EXPECT_THAT(entry.path().filename().string(), ::testing::Not(HasSubstr(".partial")));
  }
}

struct ExactCase {
  std::string variant;
  QuantizeCheckpointOptions options;
};

TEST(QuantizeCheckpointTest, NormalFloatOutputIsByteIdenticalToTransformersAndBitsandbytes) {
  QuantizeCheckpointOptions bf16_storage = FourBit("nf4", true, ScalarType::kBFloat16);
  bf16_storage.config.bnb_4bit_quant_storage = ScalarType::kBFloat16;
  for (const ExactCase& c : {ExactCase{"nf4", FourBit("nf4", false, ScalarType::kBFloat16)},
                             ExactCase{"nf4_dq", FourBit("nf4", true, ScalarType::kBFloat16)},
                             ExactCase{"nf4_dq_bf16storage", bf16_storage}}) {
    const std::string out = OutDir(c.variant);
    auto summary = QuantizeCheckpoint(kData + "/base", out, c.options);
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->converted, 7);  // q/k/v/o/gate/up/down; lm_head skipped by default
    EXPECT_EQ(summary->copied, 5);
    EXPECT_EQ(summary->shards, 1);
    const std::string bnb = kData + "/bnb_" + c.variant;
    EXPECT_TRUE(ReadBytes(out + "/model.safetensors") == ReadBytes(bnb + "/model.safetensors"))
        << c.variant;
    EXPECT_EQ(ReadBytes(out + "/config.json"), ReadBytes(bnb + "/config.json")) << c.variant;
    EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  }
}

// FP4 and LLM.int8 codes may differ from bnb's CUDA kernels where its approximate reciprocal
// lands on the other side of a rounding threshold (quant/ documents this); every other tensor and
// the layout must match exactly, and such codes must stay rare.
TEST(QuantizeCheckpointTest, Fp4AndInt8MatchBitsandbytesUpToRareThresholdCodes) {
  for (const ExactCase& c : {ExactCase{"fp4", FourBit("fp4", false)}, ExactCase{"int8", Int8()}}) {
    const std::string out = OutDir(c.variant);
    ASSERT_TRUE(QuantizeCheckpoint(kData + "/base", out, c.options).ok());
    EXPECT_EQ(ReadBytes(out + "/config.json"),
              ReadBytes(kData + "/bnb_" + c.variant + "/config.json"));
    auto ours = SafetensorsFile::Open(out + "/model.safetensors");
    auto theirs = SafetensorsFile::Open(kData + "/bnb_" + c.variant + "/model.safetensors");
    ASSERT_TRUE(ours.ok() && theirs.ok());
    ASSERT_EQ((*ours)->TensorNames(), (*theirs)->TensorNames());
    EXPECT_EQ((*ours)->header().header_size, (*theirs)->header().header_size);
    for (const std::string& name : (*ours)->TensorNames()) {
      auto a = (*ours)->Get(name);
      auto b = (*theirs)->Get(name);
      ASSERT_EQ(a->dtype, b->dtype) << name;
      ASSERT_EQ(a->data.size(), b->data.size()) << name;
      size_t differ = 0;
      for (size_t i = 0; i < a->data.size(); ++i) differ += a->data[i] != b->data[i];
      const bool codes = name.size() > 7 && name.substr(name.size() - 7) == ".weight" &&
                         (a->dtype == ScalarType::kUInt8 || a->dtype == ScalarType::kInt8);
      if (codes) {
        EXPECT_LE(differ * 1000, a->data.size()) << name << ": " << differ << " bytes differ";
      } else {
        EXPECT_EQ(differ, 0u) << name;
      }
    }
  }
}

TEST(QuantizeCheckpointTest, ShardsTheOutputKeepingEachModuleInOneShard) {
  const std::string out = OutDir("sharded");
  QuantizeCheckpointOptions options = FourBit("nf4", true);
  options.output.max_shard_bytes = 20000;
  auto summary = QuantizeCheckpoint(kData + "/base", out, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_GT(summary->shards, 2);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  auto checkpoint = Checkpoint::Open(out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE((*checkpoint)->sharded());
  EXPECT_EQ(static_cast<int>((*checkpoint)->shards().size()), summary->shards);
  auto bnb = Checkpoint::Open(kData + "/bnb_nf4_dq");
  EXPECT_EQ((*checkpoint)->TensorNames(), (*bnb)->TensorNames());
  const std::string p = "model.layers.0.mlp.up_proj.weight";
  for (const char* suffix : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                             ".quant_state.bitsandbytes__nf4"}) {
    EXPECT_EQ(*(*checkpoint)->ShardOf(p + suffix), *(*checkpoint)->ShardOf(p)) << suffix;
  }
  std::string index = ReadBytes(out + "/model.safetensors.index.json");
  EXPECT_THAT(index, HasSubstr("\"total_size\": "));
  EXPECT_THAT(index, HasSubstr("\"model.layers.0.mlp.up_proj.weight\": \"model-00"));
}

TEST(QuantizeCheckpointTest, ReadsAShardedInputAndHonoursSkipModulesAndBlocksize) {
  // A sharded copy of the base checkpoint, plus a tokenizer file that must travel along.
  const std::string in = FreshDir("sharded_input");
  fs::create_directories(in);
  auto base = Checkpoint::Open(kData + "/base");
  ASSERT_TRUE(base.ok());
  {
    ShardedCheckpointWriter::Options small;
    small.max_shard_bytes = 60000;
    auto writer = ShardedCheckpointWriter::Create(in, small);
    ASSERT_TRUE(writer.ok());
    for (const std::string& name : (*base)->TensorNames()) {
      auto view = (*base)->Get(name);
      ASSERT_TRUE((*writer)->BeginGroup(view->data.size()).ok());
      ASSERT_TRUE((*writer)
                      ->Add(name, view->dtype, {view->shape.begin(), view->shape.end()}, view->data)
                      .ok());
    }
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  fs::copy_file(kData + "/base/config.json", in + "/config.json");
  std::ofstream(in + "/tokenizer.json") << "{}";
  std::ofstream(in + "/pytorch_model.bin") << "pickle";

  const std::string out = OutDir("sharded_input_out");
  QuantizeCheckpointOptions options = FourBit("nf4", false);
  options.config.blocksize = 128;
  options.config.llm_int8_skip_modules = std::vector<std::string>{"down_proj"};
  ASSERT_TRUE(QuantizeCheckpoint(in, out, options).ok());
  auto file = SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_NE((*file)->Find("lm_head.weight.absmax"), nullptr);  // the list replaces the default
  EXPECT_EQ((*file)->Find("model.layers.0.mlp.down_proj.weight.absmax"), nullptr);
  EXPECT_EQ((*file)->Get("model.layers.0.mlp.down_proj.weight")->dtype, ScalarType::kBFloat16);
  auto state = (*file)->Get("model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4");
  std::string json(reinterpret_cast<const char*>(state->data.data()), state->data.size());
  EXPECT_EQ(json,
            R"({"quant_type": "nf4", "blocksize": 128, "dtype": "bfloat16", "shape": [384, 64]})");
  EXPECT_EQ((*file)->Get("model.layers.0.mlp.up_proj.weight.absmax")->shape[0], 384 * 64 / 128);
  std::string config = ReadBytes(out + "/config.json");
  EXPECT_THAT(config, HasSubstr("\"llm_int8_skip_modules\": [\n      \"down_proj\"\n    ]"));
  EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  EXPECT_FALSE(fs::exists(out + "/pytorch_model.bin"));
}

// Writes `tensors` as a one-file checkpoint with the base config.
void MakeCheckpoint(const std::string& dir, const std::vector<TensorView>& tensors) {
  fs::create_directories(dir);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  fs::copy_file(kData + "/base/config.json", dir + "/config.json");
}

std::string QuantizeError(const std::string& in, const QuantizeCheckpointOptions& options) {
  static int calls = 0;
  const std::string out =
      OutDir("error_" + std::to_string(::getpid()) + "_" + std::to_string(++calls));
  auto result = QuantizeCheckpoint(in, out, options);
  if (result.ok()) return "OK";
  ExpectNothingLeft(out);
  return std::string(result.status().message());
}

TEST(QuantizeCheckpointTest, RejectsBadWeightsNamingFileAndTensor) {
  std::vector<int64_t> shape = {4, 64};
  std::vector<float> values(256, 0.5f);
  auto bytes = [&](const std::vector<float>& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
  };
  const std::string name = "model.layers.0.self_attn.q_proj.weight";

  std::vector<float> nan = values;
  nan[77] = std::nanf("");
  std::string dir = FreshDir("nan_in");
  MakeCheckpoint(dir, {TensorView{name, ScalarType::kFloat32, shape, bytes(nan)}});
  std::string error = QuantizeError(dir, FourBit("nf4", false));
  EXPECT_THAT(error,
              HasSubstr(dir + "/model.safetensors: tensor \"" + name + "\": element 77 is NaN"));

  std::vector<float> inf = values;
  inf[3] = INFINITY;
  dir = FreshDir("inf_in");
  MakeCheckpoint(dir, {TensorView{name, ScalarType::kFloat32, shape, bytes(inf)}});
  EXPECT_THAT(QuantizeError(dir, Int8()), HasSubstr("element 3 is infinite"));

  std::vector<float> big = values;
  big[5] = 1e6f;
  dir = FreshDir("big_in");
  MakeCheckpoint(dir, {TensorView{name, ScalarType::kFloat32, shape, bytes(big)}});
  EXPECT_THAT(QuantizeError(dir, Int8()), HasSubstr("overflows float16"));
  EXPECT_EQ(QuantizeError(dir, FourBit("nf4", false)), "OK");

  std::vector<int32_t> ints(256, 1);
  dir = FreshDir("int_in");
  MakeCheckpoint(
      dir,
      {TensorView{
          name, ScalarType::kInt32, shape, {reinterpret_cast<const uint8_t*>(ints.data()), 1024}}});
  EXPECT_THAT(QuantizeError(dir, FourBit("nf4", false)),
              HasSubstr("tensor \"" + name + "\": dtype I32 cannot be quantized"));

  // 3 x 3 = 9 elements: 5 packed bytes, not a whole number of float32 storage elements.
  std::vector<float> odd(9, 1.0f);
  std::vector<int64_t> odd_shape = {3, 3};
  dir = FreshDir("odd_in");
  MakeCheckpoint(dir, {TensorView{name, ScalarType::kFloat32, odd_shape, bytes(odd)}});
  QuantizeCheckpointOptions f32_storage = FourBit("nf4", false);
  f32_storage.config.bnb_4bit_quant_storage = ScalarType::kFloat32;
  EXPECT_THAT(QuantizeError(dir, f32_storage), HasSubstr("do not pack into whole float32"));
  EXPECT_EQ(QuantizeError(dir, FourBit("fp4", false)), "OK");
}

TEST(QuantizeCheckpointTest, RejectsBadInputsAndOptions) {
  // Truncated shard.
  std::string dir = FreshDir("truncated_in");
  fs::copy(kData + "/base", dir);
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 10);
  EXPECT_THAT(QuantizeError(dir, FourBit("nf4", false)),
              HasSubstr(dir + "/model.safetensors: tensors need"));
  // Already quantized.
  EXPECT_THAT(QuantizeError(kData + "/bnb_nf4", FourBit("nf4", false)),
              HasSubstr("already quantized"));
  // Missing config.json.
  dir = FreshDir("no_config_in");
  fs::create_directories(dir);
  fs::copy_file(kData + "/base/model.safetensors", dir + "/model.safetensors");
  EXPECT_THAT(QuantizeError(dir, FourBit("nf4", false)), HasSubstr("config.json"));
  // Bad options.
  QuantizeCheckpointOptions bad = FourBit("nf4", false);
  bad.config.blocksize = 100;
  EXPECT_THAT(QuantizeError(kData + "/base", bad), HasSubstr("blocksize"));
  bad = FourBit("nf5", false);
  EXPECT_THAT(QuantizeError(kData + "/base", bad), HasSubstr("nf5"));
  QuantizeCheckpointOptions neither;
  EXPECT_THAT(QuantizeError(kData + "/base", neither), HasSubstr("exactly one"));
  // Existing output folder: refused, and left untouched.
  const std::string out = OutDir("existing");
  fs::create_directories(out);
  std::ofstream(out + "/keep") << "x";
  auto result = QuantizeCheckpoint(kData + "/base", out, FourBit("nf4", false));
  EXPECT_THAT(result.status().message(), HasSubstr("already exists"));
  EXPECT_TRUE(fs::exists(out + "/keep"));
}

TEST(QuantizeCheckpointTest, ReportsProgressForEveryTensor) {
  QuantizeCheckpointOptions options = FourBit("nf4", false);
  std::vector<ConvertProgress> seen;
  options.progress = [&](const ConvertProgress& p) {
    seen.push_back(p);
    return true;
  };
  ASSERT_TRUE(QuantizeCheckpoint(kData + "/base", OutDir("progress"), options).ok());
  ASSERT_EQ(seen.size(), 12u);
  EXPECT_EQ(seen.back().done, 12);
  EXPECT_EQ(seen.back().total, 12);
  EXPECT_EQ(seen[0].name, "lm_head.weight");
  EXPECT_EQ(seen[0].action, "copy");
  EXPECT_EQ(seen[3].action, "nf4");
  EXPECT_GT(seen.back().bytes_read, seen.back().bytes_written);
}

TEST(QuantizeCheckpointTest, ACancelledRunLeavesNothing) {
  QuantizeCheckpointOptions options = FourBit("nf4", true);
  int calls = 0;
  options.progress = [&](const ConvertProgress&) { return ++calls < 4; };
  const std::string out = OutDir("cancelled");
  auto result = QuantizeCheckpoint(kData + "/base", out, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 4);
  ExpectNothingLeft(out);
}

TEST(QuantizeCheckpointTest, RecognisesLinearWeightsOnly) {
  SafetensorsTensorInfo matrix;
  matrix.shape = {8, 8};
  SafetensorsTensorInfo vector;
  vector.shape = {8};
  EXPECT_TRUE(IsQuantizableLinearWeight("model.layers.3.self_attn.q_proj.weight", matrix));
  EXPECT_TRUE(IsQuantizableLinearWeight("model.layers.3.mlp.down_proj.weight", matrix));
  EXPECT_TRUE(IsQuantizableLinearWeight("lm_head.weight", matrix));
  EXPECT_FALSE(IsQuantizableLinearWeight("model.layers.3.mlp.down_proj.bias", vector));
  EXPECT_FALSE(IsQuantizableLinearWeight("model.layers.3.self_attn.q_proj.weight", vector));
  EXPECT_FALSE(IsQuantizableLinearWeight("model.embed_tokens.weight", matrix));
  EXPECT_FALSE(IsQuantizableLinearWeight("model.norm.weight", vector));
  EXPECT_FALSE(IsQuantizableLinearWeight("model.layers.0.q_proj_weight", matrix));
}

}  // namespace
}  // namespace kbitd::runtime
