// Loader: accounting, quantize-on-load layout, skip modules and clear errors for bad checkpoints.
#include "runtime/loader.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

namespace fs = std::filesystem;
const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// A writable copy of a golden model folder.
std::string CopyModel(const std::string& name, const std::string& variant) {
  std::string dir = (fs::path(::testing::TempDir()) /
                     (name + "_" + variant + "_" +
                      ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                        .string();
  fs::remove_all(dir);
  fs::copy(kModels + "/" + name + "/" + variant, dir);
  return dir;
}

void ReplaceInFile(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = ReadText(path);
  size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  WriteText(path, text);
}

absl::Status LoadStatus(const std::string& dir, std::optional<QuantizationConfig> q = {}) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = dir;
  options.quantization = q;
  return LoadModel(options).status();
}

void ExpectError(absl::Status s, absl::StatusCode code, const std::string& text) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(std::string(s.message()).find(text), std::string::npos) << s;
}

TEST(LoaderTest, QuantizeOnLoadSkipsLmHeadAndCountsBytes) {
  QuantizationConfig q;
  q.load_in_4bit = true;
  q.bnb_4bit_quant_type = "nf4";
  int64_t progress_calls = 0;
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/llama/fp32";
  options.quantization = q;
  options.progress = [&](const LoadProgress& p) {
    ++progress_calls;
    EXPECT_LE(p.tensors_done, p.tensors_total);
  };
  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  EXPECT_TRUE(m.FindLinear("lm_head")->is_dense());
  const LinearWeight* q_proj = m.FindLinear("model.layers.0.self_attn.q_proj");
  ASSERT_NE(q_proj, nullptr);
  EXPECT_EQ(q_proj->quant_type, quant::QuantType::kNf4);
  EXPECT_EQ(m.parameter_count(), 123200);
  EXPECT_GT(progress_calls, 20);
  // 4-bit layers + fp32 embedding, head and norms.
  EXPECT_LT(m.weight_bytes(), 4 * m.parameter_count());
  EXPECT_EQ(m.memory_usage()[0].bytes[static_cast<int>(MemoryCategory::kWeights)],
            m.weight_bytes());
  EXPECT_EQ(m.FindLinear("nope"), nullptr);
  ASSERT_NE(m.tokenizer(), nullptr);
  EXPECT_EQ(m.tokenizer()->vocab_size(), 384);
  auto ids = m.tokenizer()->Encode("kbitd serves models", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*m.tokenizer()->Decode(*ids, false), "kbitd serves models");
}

TEST(LoaderTest, SkipModulesReplaceTheDefault) {
  QuantizationConfig q;
  q.load_in_8bit = true;
  q.llm_int8_skip_modules = std::vector<std::string>{"mlp"};
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/llama/fp32";
  options.quantization = q;
  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->FindLinear("model.layers.1.mlp.up_proj")->is_dense());
  EXPECT_EQ((*model)->FindLinear("model.layers.1.self_attn.o_proj")->quant_type,
            quant::QuantType::kInt8Rowwise);
  EXPECT_EQ((*model)->FindLinear("lm_head")->quant_type, quant::QuantType::kInt8Rowwise);
}

TEST(LoaderTest, FollowsThePlacementPlanItReturns) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.name = "placed";
  options.path = kModels + "/llama/fp32";
  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const PlacementPlan& plan = (*model)->placement();
  std::vector<std::string> modules;
  int64_t planned = 0;
  for (const PlacementEntry& e : plan.entries) {
    modules.push_back(e.module);
    EXPECT_TRUE(e.device.is_cpu()) << e.module;  // a CPU-only build places everything on the host
    EXPECT_FALSE(e.offloaded) << e.module;
    planned += e.bytes;
  }
  EXPECT_EQ(modules, (std::vector<std::string>{"model.embed_tokens", "model.layers.0",
                                               "model.layers.1", "model.norm", "lm_head"}));
  // Every planned byte was allocated where the plan said, and nothing else.
  EXPECT_EQ(planned, (*model)->pool()->owner_bytes("placed", MemoryCategory::kWeights));
  EXPECT_EQ(plan.BytesOn(Device::Cpu()), planned);
  // A GPU in the map is refused before any weight is read on a machine without one.
  options.placement.device_map = "cuda:0";
  EXPECT_FALSE(LoadModel(options).ok());
}

TEST(LoaderTest, PlanLoadGivesLoadModelsPlanAndAllocatesNothing) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.name = "planned-only";
  options.path = kModels + "/llama/fp32";
  QuantizationConfig nf4;
  nf4.load_in_4bit = true;
  nf4.bnb_4bit_quant_type = "nf4";
  nf4.bnb_4bit_compute_dtype = ScalarType::kBFloat16;
  options.quantization = nf4;
  auto pool = *kbitd::test::TestDevices().Pool(Device::Cpu());
  const int64_t used = pool->used_bytes();
  absl::StatusOr<LoadPlan> planned = PlanLoad(options);
  ASSERT_TRUE(planned.ok()) << planned.status();
  EXPECT_EQ(pool->used_bytes(), used);
  EXPECT_EQ(planned->compute_dtype, ScalarType::kBFloat16);
  EXPECT_EQ(planned->architecture, "LlamaForCausalLM");

  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(planned->plan.entries.size(), (*model)->placement().entries.size());
  for (size_t i = 0; i < planned->plan.entries.size(); ++i) {
    const PlacementEntry& want = (*model)->placement().entries[i];
    EXPECT_EQ(planned->plan.entries[i].module, want.module);
    EXPECT_EQ(planned->plan.entries[i].device, want.device);
    EXPECT_EQ(planned->plan.entries[i].bytes, want.bytes);
  }
  EXPECT_EQ(planned->weight_bytes, (*model)->weight_bytes());

  // It fails where LoadModel would, before loading.
  options.placement.max_memory["cpu"] = 1000;
  ExpectError(PlanLoad(options).status(), absl::StatusCode::kResourceExhausted, "max_memory");
  options.placement.max_memory.clear();
  options.path = kModels + "/no-such-model";
  EXPECT_EQ(PlanLoad(options).status().code(), absl::StatusCode::kNotFound);
}

TEST(LoaderTest, MaxMemoryIsEnforced) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.path = kModels + "/llama/fp32";
  options.placement.max_memory["cpu"] = 100000;
  ExpectError(LoadModel(options).status(), absl::StatusCode::kResourceExhausted, "max_memory");
}

TEST(LoaderTest, MissingFilesAreNotFound) {
  ExpectError(LoadStatus("/nonexistent/model"), absl::StatusCode::kNotFound, "/nonexistent/model");
  std::string dir = CopyModel("llama", "fp32");
  fs::remove(dir + "/tokenizer.json");
  ExpectError(LoadStatus(dir), absl::StatusCode::kNotFound, "tokenizer.json");
  fs::remove(dir + "/config.json");
  ExpectError(LoadStatus(dir), absl::StatusCode::kNotFound, "config.json");
}

TEST(LoaderTest, FileInsteadOfFolderIsSaidToBeAFile) {
  std::string dir = CopyModel("llama", "fp32");
  absl::Status status = LoadStatus(dir + "/config.json");
  ExpectError(status, absl::StatusCode::kInvalidArgument,
              dir + "/config.json is a file, not a folder");
  EXPECT_EQ(std::string(status.message()).find("not found"), std::string::npos) << status;
}

TEST(LoaderTest, MissingTensorIsNamed) {
  std::string dir = CopyModel("mistral", "fp32");
  auto original = Checkpoint::Open(kModels + "/mistral/fp32");
  ASSERT_TRUE(original.ok());
  std::vector<TensorView> keep;
  for (const std::string& name : (*original)->TensorNames()) {
    if (name == "model.layers.1.mlp.down_proj.weight") continue;
    keep.push_back(*(*original)->Get(name));
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", keep).ok());
  ExpectError(LoadStatus(dir), absl::StatusCode::kNotFound, "model.layers.1.mlp.down_proj.weight");
}

TEST(LoaderTest, WrongShapeIsNamed) {
  std::string dir = CopyModel("llama", "fp32");
  ReplaceInFile(dir + "/config.json", "\"intermediate_size\": 128", "\"intermediate_size\": 96");
  ExpectError(
      LoadStatus(dir), absl::StatusCode::kInvalidArgument,
      "model.layers.0.mlp.gate_proj.weight has shape [128, 64] but the config needs [96, 64]");
}

TEST(LoaderTest, TokenizerVocabLargerThanEmbeddingIsRejected) {
  std::string dir = CopyModel("qwen2", "fp32");
  ReplaceInFile(dir + "/config.json", "\"vocab_size\": 384", "\"vocab_size\": 300");
  ExpectError(LoadStatus(dir), absl::StatusCode::kInvalidArgument, "vocab_size is 300");
}

TEST(LoaderTest, UnsupportedRopeScalingAndArchitecture) {
  std::string dir = CopyModel("llama", "fp32");
  ReplaceInFile(dir + "/config.json", "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
  ExpectError(LoadStatus(dir), absl::StatusCode::kUnimplemented, "\"yarn\" is not supported");
  std::string dir2 = CopyModel("mistral", "fp32");
  ReplaceInFile(dir2 + "/config.json", "\"model_type\": \"mistral\"", "\"model_type\": \"gpt2\"");
  ExpectError(LoadStatus(dir2), absl::StatusCode::kUnimplemented, "gpt2");
}

// transformers refuses such checkpoints; loading them as plain models would serve full-size
// weights under a config that says they are quantized.
TEST(LoaderTest, DeclaredQuantizationOverPlainWeightsIsRefused) {
  const std::pair<std::string, std::string> cases[] = {
      {R"("load_in_4bit": true, "bnb_4bit_quant_type": "nf4")",
       "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"},
      {R"("load_in_8bit": true)", "model.layers.0.self_attn.q_proj.SCB"},
  };
  for (const auto& [fields, marker] : cases) {
    SCOPED_TRACE(fields);
    std::string dir = CopyModel("llama", "fp32");
    ReplaceInFile(dir + "/config.json", "\"architectures\"",
                  R"("quantization_config": {"quant_method": "bitsandbytes", )" + fields +
                      "},\n  \"architectures\"");
    absl::Status status = LoadStatus(dir);
    ExpectError(status, absl::StatusCode::kInvalidArgument,
                "tensor model.layers.0.self_attn.q_proj.weight has no bitsandbytes quantization "
                "state");
    ExpectError(status, absl::StatusCode::kInvalidArgument, marker);
  }
}

TEST(LoaderTest, QuantizedCheckpointWithOnePlainModuleNamesIt) {
  std::string dir = CopyModel("mistral", "nf4");
  auto quantized = Checkpoint::Open(kModels + "/mistral/nf4");
  auto plain = Checkpoint::Open(kModels + "/mistral/fp32");
  ASSERT_TRUE(quantized.ok() && plain.ok());
  const std::string module = "model.layers.1.mlp.down_proj.weight";
  std::vector<TensorView> tensors;
  for (const std::string& name : (*quantized)->TensorNames()) {
    if (name.rfind(module, 0) != 0) tensors.push_back(*(*quantized)->Get(name));
  }
  tensors.push_back(*(*plain)->Get(module));
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  ExpectError(LoadStatus(dir), absl::StatusCode::kInvalidArgument,
              "tensor " + module + " has no bitsandbytes quantization state");
}

TEST(LoaderTest, CorruptQuantStateIsNamed) {
  std::string dir = CopyModel("mistral", "nf4");
  auto original = Checkpoint::Open(kModels + "/mistral/nf4");
  ASSERT_TRUE(original.ok());
  std::vector<TensorView> tensors;
  const std::string bad = "model.layers.0.self_attn.k_proj.weight.absmax";
  std::vector<uint8_t> short_bytes(8, 0);
  std::vector<int64_t> short_shape = {2};
  for (const std::string& name : (*original)->TensorNames()) {
    TensorView v = *(*original)->Get(name);
    if (name == bad) {
      v.shape = short_shape;
      v.data = short_bytes;
    }
    tensors.push_back(v);
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  ExpectError(LoadStatus(dir), absl::StatusCode::kInvalidArgument, bad);
}

}  // namespace
}  // namespace kbitd::runtime
