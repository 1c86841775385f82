// ModuleSizes: byte counts of each format worked out by hand, and the estimate equal to what the
// loader really allocates for every golden model and quantize-on-load variant.
#include "runtime/module_sizes.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/loader.h"
#include "runtime/model_config.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

const std::string kModels = std::string(KBITD_TEST_DATA_DIR) + "/models";

TEST(ModuleSizesTest, FormatBytes) {
  // 4096 elements, blocksize 64: 2048 packed bytes + 64 fp32 absmax.
  EXPECT_EQ(FourBitBytes(4096, 64, false), 2048 + 64 * 4);
  // Double quant: 64 uint8 codes + one fp32 nested absmax for those <= 256 blocks.
  EXPECT_EQ(FourBitBytes(4096, 64, true), 2048 + 64 + 4);
  // 19200 elements = 300 blocks: 300 codes + ceil(300 / 256) = 2 nested absmax.
  EXPECT_EQ(FourBitBytes(19200, 64, true), 9600 + 300 + 2 * 4);
  // Odd count: the last byte holds one code; one partial block.
  EXPECT_EQ(FourBitBytes(5, 64, false), 3 + 4);
  // 1000 codes + ceil(1000 / 256) = 4 fp32 absmax.
  EXPECT_EQ(Blockwise8bitBytes(1000, 256), 1000 + 4 * 4);
  // int8 [3, 5] + fp32 SCB [3].
  EXPECT_EQ(Int8RowwiseBytes(3, 5), 15 + 3 * 4);
}

// A one-layer model small enough to list its tensors by hand: hidden 8, 2 heads of 4 (q 8),
// 1 KV head (kv 4), intermediate 16, vocab 10.
ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  return c;
}

struct Linear {
  std::string prefix;
  int64_t out, in;
};

std::vector<Linear> TinyLinears() {
  const std::string a = "model.layers.0.self_attn", m = "model.layers.0.mlp";
  return {{a + ".q_proj", 8, 8},     {a + ".k_proj", 4, 8},     {a + ".v_proj", 4, 8},
          {a + ".o_proj", 8, 8},     {m + ".gate_proj", 16, 8}, {m + ".up_proj", 16, 8},
          {m + ".down_proj", 8, 16}, {"lm_head", 10, 8}};
}

// bf16 tensors as save_pretrained writes them.
TensorTable DenseTable(bool with_lm_head) {
  TensorTable t;
  t["model.embed_tokens.weight"] = {{10, 8}, 160};
  t["model.norm.weight"] = {{8}, 16};
  t["model.layers.0.input_layernorm.weight"] = {{8}, 16};
  t["model.layers.0.post_attention_layernorm.weight"] = {{8}, 16};
  for (const Linear& l : TinyLinears()) {
    if (l.prefix == "lm_head" && !with_lm_head) continue;
    t[l.prefix + ".weight"] = {{l.out, l.in}, l.out * l.in * 2};
  }
  return t;
}

TEST(ModuleSizesTest, DenseTiedWithBiases) {
  ModelConfig c = TinyConfig();
  c.tie_word_embeddings = true;
  c.attention_bias = true;  // q/k/v (qwen2)
  auto sizes = ComputeModuleSizes(c, DenseTable(false), std::nullopt);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  ASSERT_EQ(sizes->modules.size(), 4u);
  // Embedding as stored: 10 x 8 bf16.
  EXPECT_EQ(sizes->modules[0].name, "model.embed_tokens");
  EXPECT_EQ(sizes->modules[0].bytes, 160);
  // Layer: bf16 linears (q 64 + k 32 + v 32 + o 64 + gate/up/down 128 each) x 2 bytes = 1152,
  // fp32 biases on q/k/v (8 + 4 + 4) x 4 = 64, two fp32 norms 2 x 8 x 4 = 64.
  EXPECT_EQ(sizes->modules[1].name, "model.layers.0");
  EXPECT_TRUE(sizes->modules[1].decoder_layer);
  EXPECT_EQ(sizes->modules[1].bytes, 1152 + 64 + 64);
  EXPECT_EQ(sizes->modules[1].leaf_modules, 9);
  // Final norm converted to fp32: 8 x 4.
  EXPECT_EQ(sizes->modules[2].name, "model.norm");
  EXPECT_EQ(sizes->modules[2].bytes, 32);
  // Tied head: the embedding's weights, no bytes of its own, no leaf of its own.
  EXPECT_EQ(sizes->modules[3].name, "lm_head");
  EXPECT_EQ(sizes->modules[3].bytes, 0);
  EXPECT_EQ(sizes->modules[3].tied_to, "model.embed_tokens");
  EXPECT_EQ(sizes->modules[3].leaf_modules, 0);
  EXPECT_EQ(sizes->total_bytes(), 160 + 1280 + 32);
  EXPECT_EQ(sizes->largest_decoder_layer_bytes(), 1280);
  EXPECT_EQ(sizes->leaf_modules(), 1 + 9 + 1);
}

TEST(ModuleSizesTest, QuantizeOnLoadSkipsModules) {
  ModelConfig c = TinyConfig();
  QuantizationConfig q;
  q.load_in_8bit = true;
  q.llm_int8_skip_modules = std::vector<std::string>{"mlp"};
  auto sizes = ComputeModuleSizes(c, DenseTable(true), q);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  // Attention in int8 (q 64+32, k 32+16, v 32+16, o 64+32 = 288), MLP skipped: bf16 as stored
  // 3 x 128 x 2 = 768, norms 64.
  EXPECT_EQ(sizes->modules[1].bytes, 288 + 768 + 64);
  // The list replaces the default, so lm_head is quantized too: 80 + 10 x 4.
  EXPECT_EQ(sizes->modules[3].bytes, 120);
}

TEST(ModuleSizesTest, PrequantizedModulesAsStored) {
  ModelConfig c = TinyConfig();
  c.quantization.emplace();
  c.quantization->load_in_4bit = true;
  c.quantization->bnb_4bit_quant_type = "nf4";
  TensorTable t = DenseTable(true);
  for (const Linear& l : TinyLinears()) {
    if (l.prefix == "lm_head") continue;  // skipped by default: stays bf16
    const std::string w = l.prefix + ".weight";
    const int64_t n = l.out * l.in, blocks = (n + 63) / 64;
    // Double-quantized 4-bit state (bnb-spec §5.2); quant_map and the JSON blob are not resident.
    t[w] = {{n / 2, 1}, n / 2};
    t[w + ".absmax"] = {{blocks}, blocks};
    t[w + ".nested_absmax"] = {{1}, 4};
    t[w + ".quant_map"] = {{16}, 64};
    t[w + ".nested_quant_map"] = {{256}, 1024};
    t[w + ".quant_state.bitsandbytes__nf4"] = {{150}, 150};
  }
  // A quantize-on-load request is ignored for a checkpoint that is already quantized.
  QuantizationConfig ignored;
  ignored.load_in_8bit = true;
  auto sizes = ComputeModuleSizes(c, t, ignored);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  // Per linear n/2 + 1 code per block + 4: q 32+1+4, k 16+1+4, v 16+1+4, o 32+1+4,
  // gate/up/down 64+2+4 each = 37+21+21+37+210 = 326, norms 64.
  EXPECT_EQ(sizes->modules[1].bytes, 326 + 64);
  EXPECT_EQ(sizes->modules[3].bytes, 160);
}

TEST(ModuleSizesTest, ResolveLinearQuantizationAsTheLoader) {
  ModelConfig plain = TinyConfig();
  auto dense = ResolveLinearQuantization(plain, std::nullopt);
  ASSERT_TRUE(dense.ok());
  EXPECT_FALSE(dense->prequantized);
  EXPECT_FALSE(dense->quantize.has_value());
  EXPECT_EQ(dense->skip_modules, std::vector<std::string>{"lm_head"});

  QuantizationConfig request = [] {
    QuantizationConfig q;
    q.load_in_4bit = true;
    q.llm_int8_skip_modules = std::vector<std::string>{"o_proj"};
    return q;
  }();
  auto on_load = ResolveLinearQuantization(plain, request);
  ASSERT_TRUE(on_load.ok());
  ASSERT_TRUE(on_load->quantize.has_value());
  EXPECT_TRUE(on_load->quantize->load_in_4bit);
  EXPECT_EQ(on_load->skip_modules, std::vector<std::string>{"o_proj"});

  // Pre-quantized: the checkpoint's config wins, the request is ignored, its skip list with it.
  ModelConfig saved = TinyConfig();
  saved.quantization.emplace();
  saved.quantization->load_in_8bit = true;
  auto stored = ResolveLinearQuantization(saved, request);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->prequantized);
  EXPECT_FALSE(stored->quantize.has_value());
  EXPECT_EQ(stored->skip_modules, std::vector<std::string>{"lm_head"});
}

TEST(ModuleSizesTest, ErrorsNameTheTensor) {
  ModelConfig c = TinyConfig();
  TensorTable t = DenseTable(true);
  t.erase("model.layers.0.mlp.up_proj.weight");
  auto missing = ComputeModuleSizes(c, t, std::nullopt);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("model.layers.0.mlp.up_proj.weight"),
            std::string::npos);
  t = DenseTable(true);
  t["model.embed_tokens.weight"].shape = {8, 10};
  auto shape = ComputeModuleSizes(c, t, std::nullopt);
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(shape.status().message().find("has shape [8, 10] but the config needs [10, 8]"),
            std::string::npos);
  QuantizationConfig bad;
  bad.load_in_4bit = true;
  bad.bnb_4bit_quant_type = "nf5";
  EXPECT_EQ(ComputeModuleSizes(c, DenseTable(true), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Loads `dir` and checks every module's estimate against the loaded weights' own accounting, and
// the total against the bytes the loader took from the pool.
void ExpectEstimateMatchesLoad(const std::string& dir, std::optional<QuantizationConfig> q,
                               int64_t expected_total = -1) {
  SCOPED_TRACE(dir);
  auto config = ReadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto sizes = ComputeModuleSizes(*config, TensorTableOf(**checkpoint), q);
  ASSERT_TRUE(sizes.ok()) << sizes.status();

  LoadOptions options;
  options.devices = &kbitd::test::TestDevices();
  options.name = "m";
  options.path = dir;
  options.quantization = q;
  options.require_tokenizer = false;  // the GPTQ fixtures have none
  auto model = LoadModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const ModelWeights& w = m.weights();
  const int64_t hidden = config->hidden_size;
  auto linear = [](const LinearWeight& l) {
    return l.resident_bytes() + (l.bias.defined() ? 4 * l.out_features : 0);
  };
  const size_t layers = w.layers.size();
  ASSERT_EQ(sizes->modules.size(), layers + 3);
  EXPECT_EQ(
      sizes->modules[0].bytes,
      config->vocab_size * hidden * static_cast<int64_t>(ScalarTypeSize(w.embed_tokens.dtype)));
  for (size_t i = 0; i < layers; ++i) {
    const LayerWeights& l = w.layers[i];
    int64_t bytes = 2 * 4 * hidden;
    for (const LinearWeight* p :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      bytes += linear(*p);
    }
    EXPECT_EQ(sizes->modules[1 + i].name, absl::StrCat("model.layers.", i));
    EXPECT_EQ(sizes->modules[1 + i].bytes, bytes);
  }
  EXPECT_EQ(sizes->modules[layers + 1].bytes, 4 * hidden);
  EXPECT_EQ(sizes->modules[layers + 2].bytes, config->tie_word_embeddings ? 0 : linear(w.lm_head));
  EXPECT_EQ(sizes->total_bytes(), m.pool()->owner_bytes("m", MemoryCategory::kWeights));
  if (expected_total >= 0) {
    EXPECT_EQ(sizes->total_bytes(), expected_total);
  }
}

QuantizationConfig FourBit(const std::string& type, bool double_quant) {
  QuantizationConfig q;
  q.load_in_4bit = true;
  q.bnb_4bit_quant_type = type;
  q.bnb_4bit_use_double_quant = double_quant;
  return q;
}

// The golden llama (fp32, hidden 64, q 64, kv 32, intermediate 128, vocab 384, 2 layers, untied):
// embedding and head 384 x 64 x 4 = 98304 each, final norm 256, per layer norms 512 +
// linears q 4096, k 2048, v 2048, o 4096, gate/up/down 8192 elements.
TEST(ModuleSizesTest, QuantizeOnLoadEqualsTheLoad) {
  const std::string llama = kModels + "/llama/fp32";
  // Dense: 123200 parameters x 4.
  ExpectEstimateMatchesLoad(llama, std::nullopt, 492800);
  // NF4 (head skipped): 9/16 byte per element: q 2304, k 1152, v 1152, o 2304, mlp 3 x 4608
  // = 20736, + 512 per layer.
  ExpectEstimateMatchesLoad(llama, FourBit("nf4", false), 98304 + 2 * 21248 + 256 + 98304);
  ExpectEstimateMatchesLoad(llama, FourBit("fp4", false), 98304 + 2 * 21248 + 256 + 98304);
  // Double quant: per linear n/2 + n/64 codes + 4: q 2116, k 1060, v 1060, o 2116,
  // mlp 3 x 4228 = 19036, + 512 per layer.
  ExpectEstimateMatchesLoad(llama, FourBit("nf4", true), 98304 + 2 * 19548 + 256 + 98304);
  // LLM.int8: n + 4 x out: q 4352, k 2176, v 2176, o 4352, gate/up 8704, down 8448 = 38912.
  QuantizationConfig int8;
  int8.load_in_8bit = true;
  ExpectEstimateMatchesLoad(llama, int8, 98304 + 2 * 39424 + 256 + 98304);
  QuantizationConfig skip_mlp = int8;
  skip_mlp.llm_int8_skip_modules = std::vector<std::string>{"mlp"};
  ExpectEstimateMatchesLoad(llama, skip_mlp);
  QuantizationConfig blocks128 = FourBit("nf4", true);
  blocks128.blocksize = 128;
  ExpectEstimateMatchesLoad(llama, blocks128);
  // Tied heads and q/k/v biases (qwen2).
  ExpectEstimateMatchesLoad(kModels + "/qwen2/fp32", FourBit("nf4", true));
  ExpectEstimateMatchesLoad(kModels + "/mistral/fp32", int8);
}

TEST(ModuleSizesTest, PrequantizedEqualsTheLoad) {
  for (const char* family : {"llama", "mistral", "qwen2"}) {
    for (const char* variant : {"fp4", "nf4", "nf4-dq", "int8"}) {
      ExpectEstimateMatchesLoad(absl::StrCat(kModels, "/", family, "/", variant), std::nullopt);
    }
  }
  // As stored, the same bytes as quantizing the fp32 llama on load.
  ExpectEstimateMatchesLoad(kModels + "/llama/nf4-dq", std::nullopt,
                            98304 + 2 * 19548 + 256 + 98304);
  ExpectEstimateMatchesLoad(kModels + "/llama/int8", std::nullopt, 98304 + 2 * 39424 + 256 + 98304);
}

// tests/data/gptq (hidden 64, q 64, kv 32, intermediate 64, vocab 32, 1 layer, fp16 embedding):
// GPTQ linears as stored, qweight in * bits / 32 x out int32, qzeros groups x out * bits / 32
// int32, scales groups x out fp16, g_idx in int32.
TEST(ModuleSizesTest, GptqAsStoredEqualsTheLoad) {
  // 4-bit, group 48 (2 groups over 64 inputs): 64 x 64 linears (q, o, gate, up, down) 2048 + 64 +
  // 256 + 256 = 2624, k/v 1024 + 32 + 128 + 256 = 1440; layer norms 512; embedding and fp16 head
  // 4096 each, final norm 256.
  ExpectEstimateMatchesLoad(std::string(KBITD_TEST_DATA_DIR) + "/gptq/llama_gptq4", std::nullopt,
                            4096 + 512 + 5 * 2624 + 2 * 1440 + 256 + 4096);
  // 3-bit, group 40 (2 groups), q/k/v/o biases (fp32), GPTQ head: 64 x 64 linears 1536 + 48 +
  // 256 + 256 = 2096, k/v 768 + 24 + 128 + 256 = 1176; biases 4 x (64 + 32 + 32 + 64) = 768;
  // head [32, 64] 1176.
  ExpectEstimateMatchesLoad(std::string(KBITD_TEST_DATA_DIR) + "/gptq/llama_gptq3", std::nullopt,
                            4096 + 512 + 5 * 2096 + 2 * 1176 + 768 + 256 + 1176);
}

TEST(ModuleSizesTest, GptqSkipListAndNoQuantizeOnLoad) {
  ModelConfig c = TinyConfig();
  c.quantization.emplace();
  c.quantization->gptq.emplace();
  auto stored = ResolveLinearQuantization(c, std::nullopt);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_TRUE(stored->prequantized);
  EXPECT_EQ(stored->skip_modules, std::vector<std::string>{"lm_head"});
  c.quantization->gptq->lm_head = true;  // GPTQModel quantized the head too
  EXPECT_TRUE(ResolveLinearQuantization(c, std::nullopt)->skip_modules.empty());
  QuantizationConfig request;
  request.gptq.emplace();
  EXPECT_EQ(ResolveLinearQuantization(TinyConfig(), request).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace kbitd::runtime
