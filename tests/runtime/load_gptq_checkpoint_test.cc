// A GPTQ checkpoint (tests/data/gptq, tools/golden/make_gptq_fixtures.py) loads with its packed
// tensors resident as stored and serves on the CPU backend exactly like the same model with the
// generator's dequantized float32 weights served as a plain float32 checkpoint; bad checkpoints
// fail naming the tensor, leaving nothing loaded.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

namespace fs = std::filesystem;
const std::string kGptq = std::string(KBITD_TEST_DATA_DIR) + "/gptq";

absl::StatusOr<std::shared_ptr<Model>> Load(const std::string& dir, ScalarType compute_dtype,
                                            const DeviceSet& devices = kbitd::test::TestDevices(),
                                            const std::string& name = "model") {
  LoadOptions options;
  options.devices = &devices;
  options.name = name;
  options.path = dir;
  options.require_tokenizer = false;  // the fixtures have none (vocab 32)
  options.compute_dtype = compute_dtype;
  return LoadModel(options);
}

// Logits of a prefill of 7 tokens then three greedy decode steps, and the tokens chosen.
std::vector<float> Logits(std::shared_ptr<Model> model) {
  Engine::Options options;
  options.kv_cache_tokens = 64;
  options.keep_last_logits = true;  // LastLogits is read below
  auto engine = Engine::Create(model, kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  SamplingParams greedy;
  greedy.temperature = 0;
  const std::vector<int32_t> prompt = {0, 5, 17, 3, 29, 8, 12};
  EXPECT_TRUE((*engine)->AddSequence(1, prompt, greedy).ok());
  std::vector<float> all;
  for (int step = 0; step < 4; ++step) {
    auto s = (*engine)->Step({{1, step == 0 ? static_cast<int32_t>(prompt.size()) : 1}});
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return all;
    const std::vector<float>& logits = (*engine)->LastLogits(1);
    all.insert(all.end(), logits.begin(), logits.end());
    all.push_back(static_cast<float>((*s)[0].token));
  }
  return all;
}

class GptqModelTest : public ::testing::TestWithParam<std::tuple<std::string, ScalarType>> {};

// fp32 serving dequantizes exactly, so the logits are bit for bit those of the float32 twin; with
// an fp16 compute dtype both round activations alike, so they agree bit for bit too.
TEST_P(GptqModelTest, LogitsEqualTheDequantizedFloat32Model) {
  const auto& [name, dtype] = GetParam();
  auto gptq = Load(kGptq + "/" + name, dtype);
  ASSERT_TRUE(gptq.ok()) << gptq.status();
  auto twin = Load(kGptq + "/" + name + "_dequant", dtype);
  ASSERT_TRUE(twin.ok()) << twin.status();
  const std::vector<float> got = Logits(*gptq), want = Logits(*twin);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(got.size(), 4u * 33u);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  float max_diff = 0;
  for (size_t i = 0; i < got.size(); ++i)
    max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
  EXPECT_EQ(max_diff, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(All, GptqModelTest,
                         ::testing::Combine(::testing::Values("llama_gptq4", "llama_gptq3"),
                                            ::testing::Values(ScalarType::kFloat32,
                                                              ScalarType::kFloat16)));

// The linears are resident as GPTQ (the checkpoint's bytes), lm_head as the config says, and the
// model's dequantization equals the generator's float32 weights.
TEST(LoadGptqCheckpointTest, ResidentAsStoredAndDequantizesExactly) {
  for (const char* name : {"llama_gptq4", "llama_gptq3"}) {
    SCOPED_TRACE(name);
    auto model = Load(kGptq + "/" + name, ScalarType::kFloat32);
    ASSERT_TRUE(model.ok()) << model.status();
    auto checkpoint = Checkpoint::Open(kGptq + "/" + name);
    auto twin = Checkpoint::Open(kGptq + "/" + name + "_dequant");
    ASSERT_TRUE(checkpoint.ok() && twin.ok());
    const bool three_bit = std::string(name) == "llama_gptq3";
    const ModelWeights& w = (*model)->weights();
    const LayerWeights& layer = w.layers[0];
    for (const LinearWeight* l : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
                                  &layer.gate_proj, &layer.up_proj, &layer.down_proj, &w.lm_head}) {
      SCOPED_TRACE(l->name);
      if (l == &w.lm_head && !three_bit) {
        EXPECT_TRUE(l->is_dense());
        EXPECT_EQ(l->dense.dtype, ScalarType::kFloat16);
        continue;
      }
      ASSERT_TRUE(l->is_gptq());
      EXPECT_EQ(l->gptq.bits, three_bit ? 3 : 4);
      EXPECT_EQ(l->gptq.group_size, three_bit ? 40 : 48);
      EXPECT_EQ(l->gptq.zero_format,
                three_bit ? quant::GptqZeroFormat::kV2 : quant::GptqZeroFormat::kV1);
      EXPECT_EQ(l->bias.defined(),
                three_bit && l != &w.lm_head && l->name.find("attn") != std::string::npos);
      int64_t stored = 0;
      for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
        stored += static_cast<int64_t>((**(*checkpoint)->Info(l->name + suffix)).size_bytes());
      }
      EXPECT_EQ(l->resident_bytes(), stored);
      std::vector<uint8_t> values;
      std::vector<int64_t> shape;
      ASSERT_TRUE((*model)->DequantizeLinear(l->name, ScalarType::kFloat32, &values, &shape).ok());
      EXPECT_EQ(shape, (std::vector<int64_t>{l->out_features, l->in_features}));
      auto want = (*twin)->Get(l->name + ".weight");
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_EQ(values.size(), want->data.size());
      EXPECT_EQ(std::memcmp(values.data(), want->data.data(), values.size()), 0);
    }
    // Memory as for the other formats: the pool's weight bytes, under 16 bits per parameter.
    const double bits = 8.0 * (*model)->weight_bytes() / (*model)->parameter_count();
    EXPECT_LT(bits, three_bit ? 8.0 : 10.0);
    EXPECT_GT(bits, three_bit ? 3.0 : 4.0);
  }
}

// A writable copy of a fixture folder whose tensors `edit` may change or drop.
struct TensorEdit {
  std::string name;
  std::vector<int64_t> shape;  // empty: keep
  std::vector<uint8_t> data;   // the new bytes
  bool drop = false;           // drop the tensor; a name not in the checkpoint is added (F16)
};

std::string CopyWithEdits(const std::string& name, const std::vector<TensorEdit>& edits,
                          const std::string& tag) {
  const std::string dir = (fs::path(::testing::TempDir()) / ("gptq_" + tag)).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy(kGptq + "/" + name + "/config.json", dir + "/config.json");
  auto original = Checkpoint::Open(kGptq + "/" + name);
  EXPECT_TRUE(original.ok()) << original.status();
  std::vector<TensorView> tensors;
  std::map<std::string, const TensorEdit*> by_name;
  for (const TensorEdit& e : edits) by_name[e.name] = &e;
  for (const std::string& t : (*original)->TensorNames()) {
    TensorView v = *(*original)->Get(t);
    if (auto it = by_name.find(t); it != by_name.end()) {
      const TensorEdit& e = *it->second;
      by_name.erase(it);
      if (e.drop) continue;
      if (!e.shape.empty()) v.shape = e.shape;
      v.data = e.data;
    }
    tensors.push_back(v);
  }
  for (const auto& [added, e] : by_name) {  // names not in the checkpoint: added
    tensors.push_back(TensorView{e->name, ScalarType::kFloat16, e->shape, e->data});
  }
  absl::Status written = WriteSafetensors(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(written.ok()) << written;
  return dir;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void ReplaceInFile(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = ReadText(path);
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  std::ofstream(path) << text;
}

// A failed load names the tensor and leaves no bytes behind in the pool.
void ExpectLoadError(const std::string& dir, absl::StatusCode code, const std::string& text) {
  SCOPED_TRACE(dir);
  auto devices = kbitd::test::MakeTestDevices();
  auto model = Load(dir, ScalarType::kFloat32, *devices, "bad");
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), code) << model.status();
  EXPECT_NE(std::string(model.status().message()).find(text), std::string::npos) << model.status();
  EXPECT_EQ((*devices->Pool(Device::Cpu()))->owner_bytes("bad"), 0);
}

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::vector<uint8_t> TensorBytes(const std::string& model, const std::string& tensor) {
  auto checkpoint = Checkpoint::Open(kGptq + "/" + model);
  EXPECT_TRUE(checkpoint.ok());
  auto view = (*checkpoint)->Get(tensor);
  EXPECT_TRUE(view.ok()) << tensor;
  return std::vector<uint8_t>(view->data.begin(), view->data.end());
}

TEST(LoadGptqCheckpointTest, GIdxOutOfRangeIsNamed) {
  const std::string up = "model.layers.0.mlp.up_proj";
  std::vector<uint8_t> g_idx = TensorBytes("llama_gptq4", up + ".g_idx");
  const int32_t two = 2;  // 2 groups: [0, 2)
  std::memcpy(g_idx.data() + 4 * 9, &two, 4);
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{up + ".g_idx", {}, g_idx}}, "g_idx"),
                  absl::StatusCode::kInvalidArgument,
                  "tensor " + up + ".g_idx: g_idx[9] = 2 is outside [0, 2)");
}

TEST(LoadGptqCheckpointTest, InconsistentShapesAreNamed) {
  const std::string k = "model.layers.0.self_attn.k_proj";
  // qzeros of 3 words a row for 32 outputs of 4 bits (4 words).
  std::vector<uint8_t> qzeros(2 * 3 * 4, 0);
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{k + ".qzeros", {2, 3}, qzeros}}, "qzeros"),
                  absl::StatusCode::kInvalidArgument,
                  "tensor " + k + ".qzeros: expected I32 [2, 4], got I32 [2, 3]");
  // scales of 3 groups where group size 48 over 64 inputs makes 2.
  std::vector<uint8_t> scales(3 * 32 * 2, 0);
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{k + ".scales", {3, 32}, scales}}, "scales"),
                  absl::StatusCode::kInvalidArgument,
                  "tensor " + k + ".scales: expected F16 [2, 32], got F16 [3, 32]");
  // g_idx of 96 rows: the weight would be [32, 96] where the config needs [32, 64].
  std::vector<uint8_t> g_idx(96 * 4, 0);
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{k + ".g_idx", {96}, g_idx}}, "g_idx96"),
                  absl::StatusCode::kInvalidArgument,
                  "tensor " + k + ".qweight: expected I32 [12, 32], got I32 [8, 32]");
  // The config's group size disagrees with the stored groups.
  const std::string dir = CopyWithEdits("llama_gptq4", {}, "group64");
  ReplaceInFile(dir + "/config.json", "\"group_size\": 48", "\"group_size\": 64");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  "model.layers.0.self_attn.q_proj.scales: expected F16 [1, 64], got F16 [2, 64]");
}

TEST(LoadGptqCheckpointTest, ConfigMismatchesAreNamed) {
  std::string dir = CopyWithEdits("llama_gptq4", {}, "bits5");
  ReplaceInFile(dir + "/config.json", "\"bits\": 4", "\"bits\": 5");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  "quantization_config.bits: 5 is not supported");
  // 8 bits: every qweight is too small for its codes.
  dir = CopyWithEdits("llama_gptq4", {}, "bits8");
  ReplaceInFile(dir + "/config.json", "\"bits\": 4", "\"bits\": 8");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, ".qweight: expected I32 [16, ");
  // A model shape that differs from the GPTQ tensors'.
  dir = CopyWithEdits("llama_gptq4", {}, "intermediate");
  ReplaceInFile(dir + "/config.json", "\"intermediate_size\": 64", "\"intermediate_size\": 96");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  "GPTQ module model.layers.0.mlp.gate_proj holds a [64, 64] weight");
}

TEST(LoadGptqCheckpointTest, MissingOrPlainModulesAreNamed) {
  const std::string v = "model.layers.0.self_attn.v_proj";
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{v + ".g_idx", {}, {}, true}}, "no_g_idx"),
                  absl::StatusCode::kNotFound, v + ".g_idx");
  // A decoder linear stored plain under a GPTQ config.
  std::vector<uint8_t> plain(32 * 64 * 2, 0);
  std::vector<TensorEdit> edits = {{v + ".qweight", {}, {}, true},
                                   {v + ".qzeros", {}, {}, true},
                                   {v + ".scales", {}, {}, true},
                                   {v + ".g_idx", {}, {}, true},
                                   {v + ".weight", {32, 64}, plain}};
  ExpectLoadError(CopyWithEdits("llama_gptq4", edits, "plain_v"),
                  absl::StatusCode::kInvalidArgument,
                  "linear " + v + " has no GPTQ tensors (no " + v + ".qweight");
  // GPTQ tensors and a plain weight for one module.
  ExpectLoadError(CopyWithEdits("llama_gptq4", {{v + ".weight", {32, 64}, plain}}, "both_v"),
                  absl::StatusCode::kInvalidArgument, "module \"" + v + "\" has both GPTQ tensors");
}

// The config's checkpoint_format decides how the zeros read: the v1 model read as gptq_v2 is
// another model (every zero one lower).
TEST(LoadGptqCheckpointTest, ZeroFormatComesFromTheConfig) {
  const std::string dir = CopyWithEdits("llama_gptq4", {}, "as_v2");
  ReplaceInFile(dir + "/config.json", "\"checkpoint_format\": \"gptq\"",
                "\"checkpoint_format\": \"gptq_v2\"");
  auto as_v2 = Load(dir, ScalarType::kFloat32);
  ASSERT_TRUE(as_v2.ok()) << as_v2.status();
  auto twin = Load(kGptq + "/llama_gptq4_dequant", ScalarType::kFloat32);
  ASSERT_TRUE(twin.ok()) << twin.status();
  const std::vector<float> got = Logits(*as_v2), want = Logits(*twin);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_NE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace kbitd::runtime
