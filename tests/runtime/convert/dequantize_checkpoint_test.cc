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
  EXPECT_THAT(plain.status().message(), HasSubstr("no bitsandbytes-quantized tensors"));
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

}  // namespace
}  // namespace kbitd::runtime
