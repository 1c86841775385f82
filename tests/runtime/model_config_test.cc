#include "runtime/model_config.h"

#include <cmath>
#include <tuple>

#include "gtest/gtest.h"
#include "runtime/llama_forward.h"

namespace kbitd::runtime {
namespace {

const char* kLlama = R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
  "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
  "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
  "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "eos_token_id": [1, 2],
  "rope_theta": 500000.0, ROPE "tie_word_embeddings": true})";

std::string WithRope(const std::string& rope) {
  std::string text = kLlama;
  text.replace(text.find("ROPE"), 4, rope);
  return text;
}

TEST(ModelConfigTest, ParsesLlamaWithGqaAndDefaults) {
  auto c = ParseModelConfig(WithRope(""));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->kv_size(), 64);
  EXPECT_EQ(c->torch_dtype, ScalarType::kBFloat16);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_FALSE(c->attention_bias);
}

TEST(ModelConfigTest, Qwen2HasQkvBiasAndMistralSlidingWindow) {
  auto q = ParseModelConfig(R"({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->attention_bias);
  EXPECT_FALSE(q->o_proj_bias);
  auto m = ParseModelConfig(R"({"model_type": "mistral", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "sliding_window": 64, "head_dim": 8})");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->sliding_window, 64);
  EXPECT_EQ(m->head_dim, 8);
}

TEST(ModelConfigTest, RopeScalingLinearAndLlama3) {
  auto base = ParseModelConfig(WithRope(""));
  auto linear = ParseModelConfig(WithRope(R"("rope_scaling": {"type": "linear", "factor": 4.0},)"));
  ASSERT_TRUE(linear.ok()) << linear.status();
  std::vector<float> b = RopeInverseFrequencies(*base), l = RopeInverseFrequencies(*linear);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_FLOAT_EQ(l[i], b[i] / 4.0f);
  // transformers 5 spelling: rope_parameters with rope_theta inside.
  auto llama3 = ParseModelConfig(WithRope(
      R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
         "rope_theta": 500000.0},)"));
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  std::vector<float> s = RopeInverseFrequencies(*llama3);
  // High frequencies (wavelength < 8192/4) unchanged, low ones (> 8192) divided by 8, between
  // them interpolated.
  EXPECT_FLOAT_EQ(s[0], b[0]);
  EXPECT_FLOAT_EQ(s.back(), b.back() / 8.0f);
  bool interpolated = false;
  for (size_t i = 0; i < s.size(); ++i) {
    double wavelen = 2 * M_PI / b[i];
    if (wavelen > 2048 && wavelen < 8192) {
      interpolated = true;
      EXPECT_LT(s[i], b[i]);
      EXPECT_GT(s[i], b[i] / 8.0f);
    }
  }
  EXPECT_TRUE(interpolated);
}

TEST(ModelConfigTest, ClearErrors) {
  auto expect = [](const std::string& text, absl::StatusCode code, const std::string& what) {
    auto c = ParseModelConfig(text, "x/config.json");
    EXPECT_EQ(c.status().code(), code) << c.status();
    EXPECT_NE(std::string(c.status().message()).find(what), std::string::npos) << c.status();
    EXPECT_NE(std::string(c.status().message()).find("x/config.json"), std::string::npos);
  };
  expect(WithRope(R"("rope_scaling": {"type": "dynamic", "factor": 2.0},)"),
         absl::StatusCode::kUnimplemented, "dynamic");
  expect(WithRope(R"("rope_scaling": {"type": "linear"},)"), absl::StatusCode::kInvalidArgument,
         "factor");
  expect(R"({"model_type": "gpt2"})", absl::StatusCode::kUnimplemented, "gpt2");
  std::string bad_heads = WithRope("");
  bad_heads.replace(bad_heads.find("\"num_key_value_heads\": 2"), 24, "\"num_key_value_heads\": 3");
  expect(bad_heads, absl::StatusCode::kInvalidArgument, "num_key_value_heads");
  std::string negative = WithRope("");
  negative.replace(negative.find("\"hidden_size\": 256"), 18, "\"hidden_size\": -1");
  expect(negative, absl::StatusCode::kInvalidArgument, "hidden_size");
  expect(R"({"model_type": "llama", "vocab_size": 10})", absl::StatusCode::kInvalidArgument,
         "hidden_size");
  expect(WithRope(R"("quantization_config": {"quant_method": "awq"},)"),
         absl::StatusCode::kUnimplemented, "\"awq\" is not supported");
  expect(WithRope(R"("quantization_config": {"load_in_4bit": true, "load_in_8bit": true},)"),
         absl::StatusCode::kInvalidArgument, "load_in_8bit");
  expect(
      WithRope(R"("quantization_config": {"load_in_4bit": true, "bnb_4bit_quant_type": "int3"},)"),
      absl::StatusCode::kInvalidArgument, "bnb_4bit_quant_type");
}

TEST(QuantizationConfigTest, ParsesTransformersFieldsAndSkipMatching) {
  auto c = ParseModelConfig(WithRope(R"("quantization_config": {"_load_in_4bit": true,
    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
    "llm_int8_skip_modules": ["lm_head", "mlp.down_proj"], "llm_int8_threshold": 6.0,
    "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"},)"));
  ASSERT_TRUE(c.ok()) << c.status();
  const QuantizationConfig& q = *c->quantization;
  EXPECT_TRUE(q.load_in_4bit && q.bnb_4bit_use_double_quant);
  EXPECT_EQ(q.bnb_4bit_quant_type, "nf4");
  EXPECT_EQ(q.bnb_4bit_compute_dtype, ScalarType::kBFloat16);
  const auto& skip = *q.llm_int8_skip_modules;
  EXPECT_TRUE(IsModuleSkipped(skip, "lm_head"));
  EXPECT_TRUE(IsModuleSkipped(skip, "model.layers.3.mlp.down_proj"));
  EXPECT_FALSE(IsModuleSkipped(skip, "model.layers.3.mlp.up_proj"));
  EXPECT_TRUE(IsModuleSkipped({"layers.1"}, "model.layers.1.mlp.up_proj"));
  EXPECT_FALSE(IsModuleSkipped({"layers.1"}, "model.layers.11.mlp.up_proj"));
}

// GPTQConfig as optimum / GPTQModel write it (tests/data/gptq/*/config.json).
TEST(QuantizationConfigTest, ParsesGptq) {
  auto c = ParseModelConfig(WithRope(R"("quantization_config": {"quant_method": "gptq",
    "bits": 3, "group_size": 40, "desc_act": true, "sym": false, "checkpoint_format": "gptq_v2",
    "lm_head": true, "damp_percent": 0.01, "true_sequential": true, "pack_dtype": "int32",
    "dynamic": null, "meta": {"quantizer": ["gptqmodel:4.0.0"]}},)"));
  ASSERT_TRUE(c.ok()) << c.status();
  const QuantizationConfig& q = *c->quantization;
  ASSERT_TRUE(q.gptq.has_value());
  EXPECT_TRUE(q.quantized());
  EXPECT_FALSE(q.load_in_4bit || q.load_in_8bit);
  EXPECT_EQ(q.gptq->bits, 3);
  EXPECT_EQ(q.gptq->group_size, 40);
  EXPECT_TRUE(q.gptq->desc_act);
  EXPECT_FALSE(q.gptq->sym);
  EXPECT_TRUE(q.gptq->lm_head);
  EXPECT_EQ(q.gptq->Params().zero_format, quant::GptqZeroFormat::kV2);
  EXPECT_EQ(q.gptq->Params().bits, 3);
  EXPECT_EQ(q.gptq->Params().group_size, 40);

  // Defaults: group 128, v1 zeros ("gptq"), as transformers' GPTQConfig; the older "format" key.
  auto d = ParseQuantizationConfig(*ParseJson(R"({"quant_method": "gptq", "bits": 4})"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->gptq->group_size, 128);
  EXPECT_EQ(d->gptq->checkpoint_format, "gptq");
  EXPECT_EQ(d->gptq->Params().zero_format, quant::GptqZeroFormat::kV1);
  auto f = ParseQuantizationConfig(
      *ParseJson(R"({"quant_method": "gptq", "bits": 8, "group_size": -1, "format": "gptq_v2"})"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->gptq->Params().zero_format, quant::GptqZeroFormat::kV2);
  EXPECT_EQ(f->gptq->Params().group_size, -1);
}

TEST(QuantizationConfigTest, GptqErrorsNameTheField) {
  const std::tuple<std::string, absl::StatusCode, std::string> cases[] = {
      {R"("bits": 5)", absl::StatusCode::kInvalidArgument,
       "quantization_config.bits: 5 is not supported (2, 3, 4 or 8)"},
      {R"("bits": 1)", absl::StatusCode::kInvalidArgument, "quantization_config.bits: 1"},
      {R"("group_size": 128)", absl::StatusCode::kInvalidArgument,
       "quantization_config.bits: missing"},
      {R"("bits": "4")", absl::StatusCode::kInvalidArgument,
       "quantization_config.bits: must be an integer"},
      {R"("bits": 4, "group_size": 0)", absl::StatusCode::kInvalidArgument,
       "quantization_config.group_size: 0"},
      {R"("bits": 4, "group_size": -2)", absl::StatusCode::kInvalidArgument,
       "quantization_config.group_size: -2"},
      {R"("bits": 4, "checkpoint_format": "marlin")", absl::StatusCode::kInvalidArgument,
       "quantization_config.checkpoint_format: \"marlin\""},
      {R"("bits": 4, "desc_act": "yes")", absl::StatusCode::kInvalidArgument,
       "quantization_config.desc_act"},
      {R"("bits": 4, "pack_dtype": "int16")", absl::StatusCode::kInvalidArgument,
       "quantization_config.pack_dtype: \"int16\""},
      {R"("bits": 4, "dynamic": {"-:.*down_proj": {}})", absl::StatusCode::kUnimplemented,
       "quantization_config.dynamic"},
  };
  for (const auto& [fields, code, message] : cases) {
    SCOPED_TRACE(fields);
    auto json = ParseJson(R"({"quant_method": "gptq", )" + fields + "}");
    ASSERT_TRUE(json.ok()) << json.status();
    auto c = ParseQuantizationConfig(*json);
    EXPECT_EQ(c.status().code(), code) << c.status();
    EXPECT_NE(std::string(c.status().message()).find(message), std::string::npos) << c.status();
  }
}

}  // namespace
}  // namespace kbitd::runtime
