#include "runtime/convert/dequantize_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/convert/inspect_checkpoint.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kData = std::string(KBITD_TEST_DATA_DIR) + "/kbitq";

std::string FreshDir(const std::string& name) {
  std::string dir = testing::TempDir() + "/dequantize_checkpoint_test/" + name;
  fs::remove_all(dir);
  fs::create_directories(fs::path(dir).parent_path());
  return dir;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// dequant_<v>.safetensors holds bitsandbytes' own dequantize_4bit output for every quantized
// Linear of bnb_<v> (recorded on the GPU by tools/golden/kbitq_golden.py): ours must be identical.
TEST(DequantizeCheckpointTest, MatchesBitsandbytesDequantizationExactly) {
  for (const std::string variant : {"nf4", "nf4_dq", "fp4", "nf4_dq_bf16storage"}) {
    const std::string out = FreshDir(variant);
    auto summary = DequantizeCheckpoint(kData + "/bnb_" + variant, out, {});
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->converted, 7);
    EXPECT_EQ(summary->copied, 5);
    auto ours = SafetensorsFile::Open(out + "/model.safetensors");
    const std::string golden_variant = variant == "nf4_dq_bf16storage" ? "nf4_dq" : variant;
    auto golden = SafetensorsFile::Open(kData + "/dequant_" + golden_variant + ".safetensors");
    ASSERT_TRUE(ours.ok() && golden.ok());
    ASSERT_EQ((*golden)->tensors().size(), 7u);
    for (const std::string& name : (*golden)->TensorNames()) {
      auto a = (*ours)->Get(name);
      auto b = (*golden)->Get(name);
      ASSERT_TRUE(a.ok()) << a.status();
      EXPECT_EQ(a->dtype, ScalarType::kBFloat16) << name;
      EXPECT_EQ(std::vector<int64_t>(a->shape.begin(), a->shape.end()),
                std::vector<int64_t>(b->shape.begin(), b->shape.end()));
      ASSERT_EQ(a->data.size(), b->data.size());
      EXPECT_EQ(std::memcmp(a->data.data(), b->data.data(), a->data.size()), 0)
          << variant << " " << name;
    }
    // Plain tensors are copied unchanged, and the result is a plain checkpoint again.
    auto base = Checkpoint::Open(kData + "/base");
    auto embed = (*ours)->Get("model.embed_tokens.weight");
    EXPECT_EQ(
        std::memcmp(embed->data.data(), (*base)->Get("model.embed_tokens.weight")->data.data(),
                    embed->data.size()),
        0);
    EXPECT_EQ((*ours)->TensorNames(), (*base)->TensorNames());
    EXPECT_EQ(ReadBytes(out + "/config.json"), ReadBytes(kData + "/base/config.json"));
  }
}

// dequant_int8.safetensors: bnb's int8_vectorwise_dequant (float32) of every Linear8bitLt that
// transformers loaded from bnb_int8.
TEST(DequantizeCheckpointTest, Int8MatchesBitsandbytesVectorwiseDequantExactly) {
  const std::string out = FreshDir("int8");
  DequantizeCheckpointOptions options;
  options.dtype = ScalarType::kFloat32;
  ASSERT_TRUE(DequantizeCheckpoint(kData + "/bnb_int8", out, options).ok());
  auto ours = SafetensorsFile::Open(out + "/model.safetensors");
  auto golden = SafetensorsFile::Open(kData + "/dequant_int8.safetensors");
  ASSERT_TRUE(ours.ok() && golden.ok());
  ASSERT_EQ((*golden)->tensors().size(), 7u);
  for (const std::string& name : (*golden)->TensorNames()) {
    auto a = (*ours)->Get(name);
    auto b = (*golden)->Get(name);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_EQ(a->dtype, ScalarType::kFloat32);
    ASSERT_EQ(a->data.size(), b->data.size()) << name;
    EXPECT_EQ(std::memcmp(a->data.data(), b->data.data(), a->data.size()), 0) << name;
  }
  // --dtype also casts the plain floating-point tensors and is recorded in config.json.
  EXPECT_EQ((*ours)->Get("model.embed_tokens.weight")->dtype, ScalarType::kFloat32);
  EXPECT_THAT(ReadBytes(out + "/config.json"), HasSubstr("\"dtype\": \"float32\""));
  EXPECT_THAT(ReadBytes(out + "/config.json"), ::testing::Not(HasSubstr("quantization_config")));
  // Without --dtype, LLM.int8 weights come back as float16 (bnb quantizes from fp16).
  const std::string out16 = FreshDir("int8_default");
  ASSERT_TRUE(DequantizeCheckpoint(kData + "/bnb_int8", out16, {}).ok());
  auto f16 = SafetensorsFile::Open(out16 + "/model.safetensors");
  EXPECT_EQ((*f16)->Get("model.layers.0.mlp.up_proj.weight")->dtype, ScalarType::kFloat16);
  EXPECT_EQ((*f16)->Get("model.embed_tokens.weight")->dtype, ScalarType::kBFloat16);
}

TEST(DequantizeCheckpointTest, RejectsPlainAndCorruptCheckpoints) {
  std::string out = FreshDir("plain");
  auto plain = DequantizeCheckpoint(kData + "/base", out, {});
  EXPECT_THAT(plain.status().message(), HasSubstr("no quantized tensors"));
  EXPECT_FALSE(fs::exists(out));

  // A quant state whose absmax lost an element: the message names the file and the tensor.
  const std::string dir = FreshDir("corrupt_in");
  fs::create_directories(dir);
  fs::copy_file(kData + "/bnb_nf4/config.json", dir + "/config.json");
  auto bnb = Checkpoint::Open(kData + "/bnb_nf4");
  {
    std::vector<TensorView> views;
    std::vector<std::vector<int64_t>> shapes;
    shapes.resize((*bnb)->TensorNames().size());
    size_t i = 0;
    for (const std::string& name : (*bnb)->TensorNames()) {
      TensorView view = *(*bnb)->Get(name);
      if (name == "model.layers.0.self_attn.k_proj.weight.absmax") {
        shapes[i] = {view.shape[0] - 1};
        view.shape = shapes[i];
        view.data = view.data.first(view.data.size() - 4);
      }
      views.push_back(view);
      ++i;
    }
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", views).ok());
  }
  out = FreshDir("corrupt_out");
  auto corrupt = DequantizeCheckpoint(dir, out, {});
  EXPECT_THAT(corrupt.status().message(), HasSubstr(dir + "/model.safetensors: "));
  EXPECT_THAT(corrupt.status().message(), HasSubstr("k_proj.weight.absmax"));
  EXPECT_FALSE(fs::exists(out));
}

TEST(DequantizeCheckpointTest, ACancelledRunLeavesNothing) {
  DequantizeCheckpointOptions options;
  options.progress = [](const ConvertProgress& p) { return p.done < 2; };
  const std::string out = FreshDir("cancelled");
  auto result = DequantizeCheckpoint(kData + "/bnb_nf4", out, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(fs::exists(out));
  for (const auto& entry : fs::directory_iterator(fs::path(out).parent_path())) {
    EXPECT_THAT(entry.path().filename().string(), ::testing::Not(HasSubstr(".cancelled.partial")));
  }
}

TEST(InspectCheckpointTest, ReportsFormatsBytesAndSaving) {
  auto report = InspectCheckpoint(kData + "/bnb_nf4_dq");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->quantization, "nf4+dq");
  ASSERT_EQ(report->entries.size(), 12u);
  const ReportEntry* up = nullptr;
  for (const ReportEntry& e : report->entries) {
    if (e.name == "model.layers.0.mlp.up_proj.weight") up = &e;
  }
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->format, "nf4+dq");
  EXPECT_EQ(up->shape, (std::vector<int64_t>{384, 64}));
  EXPECT_EQ(up->params, 384 * 64);
  // packed 12288 + absmax codes 384 + nested absmax 2*4 + quant_map 64 + nested map 1024 + JSON 166
  EXPECT_EQ(up->bytes, 12288u + 384 + 8 + 64 + 1024 + 166);
  EXPECT_NEAR(up->bits_per_param(), 8.0 * 13934 / 24576, 1e-9);
  auto bnb = Checkpoint::Open(kData + "/bnb_nf4_dq");
  EXPECT_EQ(report->total_bytes, (*bnb)->TotalBytes());
  EXPECT_EQ(report->total_params, 102592);
  EXPECT_NEAR(report->saving_vs_fp16(), 1.0 - static_cast<double>(report->total_bytes) / 205184,
              1e-12);
  EXPECT_THAT(FormatReport(*report), HasSubstr("model.layers.0.mlp.up_proj.weight"));
  EXPECT_THAT(FormatReport(*report), HasSubstr("saved"));
  EXPECT_THAT(ReportToJson(*report), HasSubstr("\"format\": \"nf4+dq\""));

  auto plain = InspectCheckpoint(kData + "/base");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->quantization, "none");
  EXPECT_EQ(plain->total_bytes, plain->fp16_bytes());  // bf16 everywhere
  auto int8 = InspectCheckpoint(kData + "/bnb_int8");
  EXPECT_EQ(int8->quantization, "int8");
  EXPECT_FALSE(InspectCheckpoint(kData + "/missing").ok());
}

const std::string kGptq = std::string(KBITD_TEST_DATA_DIR) + "/gptq";

// Every tensor of `dir`'s model.safetensors equals the same-named tensor of `want_dir`'s, and
// they hold the same names.
void ExpectSameTensors(const std::string& dir, const std::string& want_dir) {
  auto got = Checkpoint::Open(dir);
  auto want = Checkpoint::Open(want_dir);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_EQ((*got)->TensorNames(), (*want)->TensorNames());
  for (const std::string& name : (*want)->TensorNames()) {
    auto a = (*got)->Get(name);
    auto b = (*want)->Get(name);
    ASSERT_TRUE(a.ok()) << name;
    EXPECT_EQ(a->dtype, b->dtype) << name;
    ASSERT_EQ(a->data.size(), b->data.size()) << name;
    EXPECT_EQ(std::memcmp(a->data.data(), b->data.data(), a->data.size()), 0) << name;
  }
}

// A GPTQ checkpoint dequantized to float32 is the generator's float32 twin, tensor for tensor
// (tools/golden/make_gptq_fixtures.py): GPTQ modules dequantized exactly, the rest cast exactly.
TEST(DequantizeCheckpointTest, GptqEqualsTheGeneratorsFloat32Twin) {
  for (const std::string model : {"llama_gptq4", "llama_gptq3"}) {
    SCOPED_TRACE(model);
    const std::string out = FreshDir(model);
    DequantizeCheckpointOptions options;
    options.dtype = ScalarType::kFloat32;
    auto summary = DequantizeCheckpoint(kGptq + "/" + model, out, options);
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->converted, model == "llama_gptq3" ? 8 : 7);
    ExpectSameTensors(out, kGptq + "/" + model + "_dequant");
    auto config = ReadJsonObjectFile(out + "/config.json");
    ASSERT_TRUE(config.ok());
    EXPECT_EQ(config->Find("quantization_config"), nullptr);
  }
  // Without --dtype a GPTQ weight comes out in float16 (its scales' dtype), rounded once.
  const std::string out = FreshDir("gptq4_fp16");
  ASSERT_TRUE(DequantizeCheckpoint(kGptq + "/llama_gptq4", out, {}).ok());
  auto half = Checkpoint::Open(out);
  auto twin = Checkpoint::Open(kGptq + "/llama_gptq4_dequant");
  ASSERT_TRUE(half.ok() && twin.ok());
  auto h = (*half)->Get("model.layers.0.mlp.down_proj.weight");
  auto f = (*twin)->Get("model.layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(h.ok() && f.ok());
  ASSERT_EQ(h->dtype, ScalarType::kFloat16);
  for (int64_t i = 0; i < f->NumElements(); ++i) {
    uint16_t got;
    float want;
    std::memcpy(&got, h->data.data() + 2 * i, 2);
    std::memcpy(&want, f->data.data() + 4 * i, 4);
    ASSERT_EQ(got, FloatToHalf(want)) << i;
  }
}

TEST(DequantizeCheckpointTest, GptqErrorsNameTheTensorOrTheConfig) {
  // GPTQ tensors under a config.json without quantization_config.
  const std::string dir = FreshDir("gptq_no_config_in");
  fs::create_directories(dir);
  fs::copy_file(kGptq + "/llama_gptq4/model.safetensors", dir + "/model.safetensors");
  fs::copy_file(kGptq + "/llama_gptq4_dequant/config.json", dir + "/config.json");
  std::string out = FreshDir("gptq_no_config_out");
  auto no_config = DequantizeCheckpoint(dir, out, {});
  EXPECT_EQ(no_config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_config.status().message(),
              HasSubstr("has GPTQ tensors (model.layers.0.mlp.down_proj.qweight) but config.json "
                        "has no quantization_config with quant_method \"gptq\""));
  EXPECT_FALSE(fs::exists(out));
  auto report = InspectCheckpoint(dir);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);

  // Unsupported bits in the config: the file and the field.
  const std::string bits = FreshDir("gptq_bits_in");
  fs::create_directories(bits);
  fs::copy_file(kGptq + "/llama_gptq4/model.safetensors", bits + "/model.safetensors");
  std::ifstream in(kGptq + "/llama_gptq4/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.replace(text.find("\"bits\": 4"), 9, "\"bits\": 6");
  std::ofstream(bits + "/config.json") << text;
  out = FreshDir("gptq_bits_out");
  auto bad_bits = DequantizeCheckpoint(bits, out, {});
  EXPECT_EQ(bad_bits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_bits.status().message(),
              HasSubstr(bits + "/config.json: quantization_config.bits: 6 is not supported"));
  EXPECT_FALSE(fs::exists(out));
}

TEST(InspectCheckpointTest, ReportsGptqModulesAsStored) {
  auto report = InspectCheckpoint(kGptq + "/llama_gptq4");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->quantization, "gptq4");
  const ReportEntry* up = nullptr;
  const ReportEntry* head = nullptr;
  for (const ReportEntry& e : report->entries) {
    if (e.name == "model.layers.0.mlp.up_proj.weight") up = &e;
    if (e.name == "lm_head.weight") head = &e;
    EXPECT_EQ(e.name.find(".qzeros"), std::string::npos) << e.name;
  }
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->format, "gptq4");
  EXPECT_EQ(up->shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(up->params, 4096);
  // qweight 8 x 64 int32 2048 + qzeros 2 x 8 int32 64 + scales 2 x 64 fp16 256 + g_idx 256.
  EXPECT_EQ(up->bytes, 2048u + 64 + 256 + 256);
  EXPECT_NEAR(up->bits_per_param(), 8.0 * 2624 / 4096, 1e-12);
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->format, "f16");
  auto checkpoint = Checkpoint::Open(kGptq + "/llama_gptq4");
  EXPECT_EQ(report->total_bytes, (*checkpoint)->TotalBytes());
  // Embedding and head 32 x 64 each, 3 norms of 64, linears q/o/gate/up/down 64 x 64, k/v 32 x 64.
  EXPECT_EQ(report->total_params, 32 * 64 * 2 + 3 * 64 + 5 * 4096 + 2 * 2048);
  EXPECT_THAT(ReportToJson(*report), HasSubstr("\"format\": \"gptq4\""));
  auto three = InspectCheckpoint(kGptq + "/llama_gptq3");
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(three->quantization, "gptq3");
}

}  // namespace
}  // namespace kbitd::runtime
