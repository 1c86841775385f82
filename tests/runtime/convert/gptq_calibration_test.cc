// GPTQ calibration through the model (runtime/convert/gptq_calibration.h) on the tiny float32
// Llama: the Hessians are 2 X^T X of the real inputs (symmetric, positive diagonal, one per
// linear but lm_head), and GPTQ with them moves the model's logits on held-out text less than
// round-to-nearest does.
#include "runtime/convert/gptq_calibration.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/convert/quantize_gptq_checkpoint.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;
const std::string kFp32 = std::string(KBITD_TEST_DATA_DIR) + "/models/llama/fp32";
const std::string kHeldout = std::string(KBITD_TEST_DATA_DIR) + "/../../models/default/heldout.txt";

std::string Dir(const std::string& name) {
  std::string dir = testing::TempDir() + "/gptq_calibration_test/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Characters [from, from + count) of the held-out text, written to `path`.
std::string TextSlice(size_t from, size_t count, const std::string& path) {
  std::ifstream in(kHeldout, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::ofstream(path, std::ios::binary) << ss.str().substr(from, count);
  return path;
}

absl::StatusOr<std::shared_ptr<Model>> Load(const std::string& dir) {
  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.name = "model";
  options.path = dir;
  options.compute_dtype = ScalarType::kFloat32;
  return LoadModel(options);
}

TEST(GptqCalibrationTest, HessiansAreTwiceXTransposeXOfEveryLinear) {
  const std::string text = TextSlice(0, 2000, Dir("h") + "/calib.txt");
  auto hessians = CollectGptqHessians(kFp32, text, {});
  ASSERT_TRUE(hessians.ok()) << hessians.status();
  EXPECT_EQ(hessians->size(), 14u);  // 7 linears x 2 layers; lm_head is never quantized
  EXPECT_FALSE(hessians->count("lm_head"));
  const auto& h = hessians->at("model.layers.1.mlp.down_proj");
  ASSERT_EQ(h.size(), 128u * 128u);
  for (int i = 0; i < 128; ++i) {
    ASSERT_GT(h[i * 128 + i], 0.0) << i;
    for (int j = 0; j < i; ++j) {
      ASSERT_EQ(h[i * 128 + j], h[j * 128 + i]);
      // Cauchy-Schwarz holds for any sum of outer products x x^T.
      ASSERT_LE(h[i * 128 + j] * h[i * 128 + j], h[i * 128 + i] * h[j * 128 + j] * (1 + 1e-9));
    }
  }
  // q, k and v read the same normed input.
  EXPECT_EQ(hessians->at("model.layers.0.self_attn.q_proj"),
            hessians->at("model.layers.0.self_attn.v_proj"));
}

TEST(GptqCalibrationTest, RejectsAMissingFile) {
  auto hessians = CollectGptqHessians(kFp32, "/nonexistent/calib.txt", {});
  EXPECT_EQ(hessians.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(hessians.status().message()), HasSubstr("/nonexistent/calib.txt"));
}

// The relative distance of the quantized model's last logits after each 8-token prefix of
// held-out text (another slice than the calibration one) from the float32 model's (`reference`);
// with no reference, the logits go to `logits_out`.
double HeldoutLogitError(const std::string& dir, const std::vector<int32_t>& ids,
                         const std::vector<float>* reference, std::vector<float>* logits_out) {
  auto model = Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return 1e9;
  Engine::Options options;
  options.kv_cache_tokens = 256;
  options.keep_last_logits = true;
  auto engine = Engine::Create(*model, kbitd::test::HostBackend(), options);
  EXPECT_TRUE(engine.ok());
  if (!engine.ok()) return 1e9;
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<float> logits;
  // One sequence per prefix length: the last logits of each prefix.
  for (size_t len = 8; len <= ids.size(); len += 8) {
    const uint64_t id = len;
    std::vector<int32_t> prefix(ids.begin(), ids.begin() + len);
    EXPECT_TRUE((*engine)->AddSequence(id, prefix, greedy).ok());
    auto s = (*engine)->Step({{id, static_cast<int32_t>(len)}});
    EXPECT_TRUE(s.ok()) << s.status();
    const std::vector<float>& l = (*engine)->LastLogits(id);
    logits.insert(logits.end(), l.begin(), l.end());
    (*engine)->RemoveSequence(id);
  }
  if (reference == nullptr) {
    *logits_out = logits;
    return 0;
  }
  double diff = 0, norm = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    diff += (logits[i] - (*reference)[i]) * double(logits[i] - (*reference)[i]);
    norm += (*reference)[i] * double((*reference)[i]);
  }
  return std::sqrt(diff / norm);
}

TEST(GptqCalibrationTest, GptqMovesHeldoutLogitsLessThanRoundToNearest) {
  const std::string dir = Dir("compare");
  const std::string calib = TextSlice(0, 6000, dir + "/calib.txt");
  auto hessians = CollectGptqHessians(kFp32, calib, {});
  ASSERT_TRUE(hessians.ok()) << hessians.status();
  auto fp32 = Load(kFp32);
  ASSERT_TRUE(fp32.ok());
  std::ifstream in(kHeldout);
  std::stringstream ss;
  ss << in.rdbuf();
  auto ids = (*fp32)->tokenizer()->Encode(ss.str().substr(50000, 600), true);
  ASSERT_TRUE(ids.ok());
  ids->resize(std::min<size_t>(ids->size(), 96));
  std::vector<float> reference;
  HeldoutLogitError(kFp32, *ids, nullptr, &reference);
  for (int bits : {3, 4}) {
    QuantizeGptqCheckpointOptions options;
    options.quant.bits = bits;
    options.quant.group_size = 32;
    options.quant.sym = false;
    const std::string b = std::to_string(bits);
    ASSERT_TRUE(QuantizeGptqCheckpoint(kFp32, dir + "/rtn" + b, options).ok());
    options.hessians = &*hessians;
    ASSERT_TRUE(QuantizeGptqCheckpoint(kFp32, dir + "/gptq" + b, options).ok());
    options.quant.act_order = true;
    ASSERT_TRUE(QuantizeGptqCheckpoint(kFp32, dir + "/act" + b, options).ok());
    const double rtn = HeldoutLogitError(dir + "/rtn" + b, *ids, &reference, nullptr);
    const double gptq = HeldoutLogitError(dir + "/gptq" + b, *ids, &reference, nullptr);
    const double act = HeldoutLogitError(dir + "/act" + b, *ids, &reference, nullptr);
    // Measured: 3 bits rtn 0.51, gptq 0.39, act order 0.17; 4 bits rtn 0.20, gptq 0.06, act
    // order 0.08. Demand a 15% gain at least.
    EXPECT_LT(gptq, 0.85 * rtn) << bits << " bits: gptq " << gptq << " rtn " << rtn;
    EXPECT_LT(act, 0.85 * rtn) << bits << " bits: act order " << act << " rtn " << rtn;
  }
}

}  // namespace
}  // namespace kbitd::runtime
