// QuantState <-> bitsandbytes state dicts: the Linear4bit / Linear8bitLt state dicts saved by bnb
// 0.50.2 (tests/data/quant) are read, dequantized bit for bit and written back byte-identically;
// malformed states give clear errors.
#include "quant/quant_state.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "tests/quant/golden_data.h"

namespace kbitd::quant {
namespace {

using golden::Goldens;
using golden::LoadTensor;
using ::testing::HasSubstr;

constexpr char kPrefix[] = "model.layers.0.mlp.up_proj";

std::vector<NamedTensor> LoadStateDict(const std::string& case_name, bool with_bias = true) {
  const JsonValue* c = Goldens::Get().Case(case_name);
  EXPECT_NE(c, nullptr) << case_name;
  std::vector<NamedTensor> out;
  if (c == nullptr) return out;
  for (const JsonValue& key : c->Find("keys")->array()) {
    if (!with_bias && key.string_value() == "bias") continue;
    golden::Tensor t = LoadTensor(*c, key.string_value());
    out.push_back({std::string(kPrefix) + "." + key.string_value(), t.dtype, t.shape, t.bytes});
  }
  return out;
}

NamedTensor* Find(std::vector<NamedTensor>& tensors, const std::string& suffix) {
  for (NamedTensor& t : tensors) {
    if (t.name == std::string(kPrefix) + "." + suffix) return &t;
  }
  return nullptr;
}

void ExpectSameStateDict(const std::vector<NamedTensor>& ours,
                         const std::vector<NamedTensor>& bnb) {
  ASSERT_EQ(ours.size(), bnb.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    SCOPED_TRACE(bnb[i].name);
    EXPECT_EQ(ours[i].name, bnb[i].name);
    EXPECT_EQ(ours[i].dtype, bnb[i].dtype);
    EXPECT_EQ(ours[i].shape, bnb[i].shape);
    EXPECT_EQ(ours[i].bytes, bnb[i].bytes);
  }
}

struct FourBitCase {
  const char* name;
  QuantType type;
  bool nested;
  ScalarType storage;
  ScalarType dtype;
};

TEST(QuantStateTest, Linear4bitStateDictsRoundTripAndDequantizeLikeBnb) {
  for (const FourBitCase& fc : {FourBitCase{"sd_linear4bit_nf4_dq_bf16", QuantType::kNf4, true,
                                            ScalarType::kUInt8, ScalarType::kBFloat16},
                                FourBitCase{"sd_linear4bit_fp4_bf16storage", QuantType::kFp4, false,
                                            ScalarType::kBFloat16, ScalarType::kBFloat16},
                                FourBitCase{"sd_linear4bit_nf4_fp16", QuantType::kNf4, false,
                                            ScalarType::kUInt8, ScalarType::kFloat16}}) {
    SCOPED_TRACE(fc.name);
    const std::vector<NamedTensor> bnb = LoadStateDict(fc.name);
    auto state = FromStateDict(bnb, kPrefix);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(state->type, fc.type);
    EXPECT_EQ(state->nested.has_value(), fc.nested);
    EXPECT_EQ(state->quant_storage, fc.storage);
    EXPECT_EQ(state->dtype, fc.dtype);
    EXPECT_EQ(state->blocksize, 64);
    EXPECT_EQ(state->shape, (std::vector<int64_t>{48, 136}));

    const JsonValue* wc = Goldens::Get().Case(std::string(fc.name) + "_weights");
    ASSERT_NE(wc, nullptr);
    const golden::Tensor want = LoadTensor(*wc, "dequant_cuda");
    std::vector<uint8_t> out(want.bytes.size());
    ASSERT_TRUE(DequantizeState(*state, fc.dtype, out.data()).ok());
    EXPECT_EQ(out, want.bytes) << "dequantized weight differs from bnb CUDA";
    // Written back: same keys in bnb's order, dtypes, shapes and bytes (JSON included).
    auto written = ToStateDict(*state, kPrefix);
    ASSERT_TRUE(written.ok()) << written.status();
    ExpectSameStateDict(*written, LoadStateDict(fc.name, /*with_bias=*/false));
  }
}

TEST(QuantStateTest, QuantizingTheWeightReproducesBnbStateDict) {
  // kbitd quantizes the same fp16 weight and writes the same state dict bytes as bnb.
  const JsonValue* wc = Goldens::Get().Case("sd_linear4bit_nf4_fp16_weights");
  ASSERT_NE(wc, nullptr);
  const golden::Tensor w = LoadTensor(*wc, "weight");
  QuantState state;
  state.type = QuantType::kNf4;
  state.shape = w.shape;
  state.dtype = ScalarType::kFloat16;
  state.data.resize(Packed4bitBytes(w.numel()));
  state.absmax.resize(NumBlocks(w.numel(), 64));
  ASSERT_TRUE(Quantize4bit(FourBitType::kNf4, w.bytes.data(), w.dtype, w.numel(), 64,
                           state.data.data(), state.absmax.data())
                  .ok());
  auto written = ToStateDict(state, kPrefix);
  ASSERT_TRUE(written.ok());
  ExpectSameStateDict(*written, LoadStateDict("sd_linear4bit_nf4_fp16", false));
}

TEST(QuantStateTest, QuantStorageReinterpretsTheSameBytesLikeBnb) {
  for (const JsonValue* c : Goldens::Get().CasesOfKind("quant_storage")) {
    SCOPED_TRACE(c->Find("name")->string_value());
    const golden::Tensor packed = LoadTensor(*c, "packed");
    const golden::Tensor packed_u8 = LoadTensor(*c, "packed_uint8");
    EXPECT_EQ(packed.bytes, packed_u8.bytes);  // bnb writes raw bytes whatever the storage dtype
    QuantState state;
    state.type = QuantType::kNf4;
    state.shape = {c->Find("n")->integer_value()};
    state.dtype = ScalarType::kBFloat16;
    state.quant_storage = *ScalarTypeFromTorchName(c->Find("storage")->string_value());
    state.data = packed_u8.bytes;
    state.absmax.assign(NumBlocks(state.numel(), 64), 1.0f);
    auto written = ToStateDict(state, kPrefix);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ((*written)[0].dtype, packed.dtype);
    EXPECT_EQ((*written)[0].shape, packed.shape);
    EXPECT_EQ((*written)[0].bytes, packed.bytes);
    auto read = FromStateDict(*written, kPrefix);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->quant_storage, state.quant_storage);
    EXPECT_EQ(read->data, state.data);
  }
  // n whose packed bytes do not fill whole fp32 elements: bnb would overrun, kbitd refuses.
  QuantState odd;
  odd.shape = {6};
  odd.quant_storage = ScalarType::kFloat32;
  odd.data.resize(3);
  odd.absmax = {1.0f};
  EXPECT_THAT(std::string(ToStateDict(odd, kPrefix).status().message()),
              HasSubstr("not a multiple of 4"));
}

TEST(QuantStateTest, JsonMatchesPythonJsonDumps) {
  QuantState state;
  state.type = QuantType::kFp4;
  state.blocksize = 128;
  state.dtype = ScalarType::kFloat32;
  state.shape = {4096, 11008};
  EXPECT_EQ(
      *QuantStateJson(state),
      R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float32", "shape": [4096, 11008]})");
  state.nested = NestedAbsmax{};
  state.nested->offset = 1.0f;
  EXPECT_THAT(
      *QuantStateJson(state),
      HasSubstr(R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1.0})"));
  state.nested->offset = 0.01727294921875f;
  EXPECT_THAT(*QuantStateJson(state), HasSubstr(R"("nested_offset": 0.01727294921875})"));
}

TEST(QuantStateTest, Linear8bitLtStateDictRoundTrips) {
  const std::vector<NamedTensor> bnb = LoadStateDict("sd_linear8bitlt_fp16");
  auto state = FromStateDict(bnb, kPrefix);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->type, QuantType::kInt8Rowwise);
  EXPECT_EQ(state->shape, (std::vector<int64_t>{48, 256}));
  EXPECT_EQ(state->scb.size(), 48u);
  auto written = ToStateDict(*state, kPrefix);
  ASSERT_TRUE(written.ok());
  ExpectSameStateDict(*written, LoadStateDict("sd_linear8bitlt_fp16", false));
  std::vector<float> w(48 * 256);
  EXPECT_TRUE(DequantizeState(*state, ScalarType::kFloat32, w.data()).ok());
  // Missing weight_format means "row".
  std::vector<NamedTensor> no_format = bnb;
  no_format.erase(no_format.begin() + 3);
  EXPECT_TRUE(FromStateDict(no_format, kPrefix).ok());
}

TEST(QuantStateTest, TiledInt8WeightFormatsAreRefused) {
  for (uint8_t format : {1, 2, 3}) {
    std::vector<NamedTensor> sd = LoadStateDict("sd_linear8bitlt_fp16");
    Find(sd, "weight_format")->bytes = {format};
    auto state = FromStateDict(sd, kPrefix);
    EXPECT_EQ(state.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(state.status().message()), HasSubstr("only 'row' (0) is supported"));
  }
}

TEST(QuantStateTest, MalformedFourBitStatesGiveClearErrors) {
  auto error_of = [](std::vector<NamedTensor> sd) {
    return std::string(FromStateDict(sd, kPrefix).status().message());
  };
  const std::vector<NamedTensor> good = LoadStateDict("sd_linear4bit_nf4_dq_bf16");
  {
    std::vector<NamedTensor> sd = good;
    sd.push_back({std::string(kPrefix) + ".weight.extra", ScalarType::kUInt8, {1}, {0}});
    EXPECT_THAT(error_of(sd), HasSubstr("unknown quantization tensor"));
  }
  {
    std::vector<NamedTensor> sd = good;
    sd.erase(sd.begin() + 2);  // weight.absmax
    EXPECT_THAT(error_of(sd), HasSubstr(".weight.absmax"));
  }
  {
    std::vector<NamedTensor> sd = good;
    Find(sd, "weight.absmax")->bytes.pop_back();
    Find(sd, "weight.absmax")->shape = {101};
    EXPECT_THAT(error_of(sd), HasSubstr("weight.absmax: expected U8 [102]"));
  }
  {
    std::vector<NamedTensor> sd = good;
    NamedTensor* json = Find(sd, "weight.quant_state.bitsandbytes__nf4");
    std::string text(json->bytes.begin(), json->bytes.end());
    text.replace(text.find("[48, 136]"), 9, "[48, 138]");
    json->bytes.assign(text.begin(), text.end());
    EXPECT_THAT(error_of(sd), HasSubstr("expected U8 [3312, 1]"));
  }
  {
    std::vector<NamedTensor> sd = good;
    NamedTensor* json = Find(sd, "weight.quant_state.bitsandbytes__nf4");
    std::string text(json->bytes.begin(), json->bytes.end());
    text.replace(text.find("\"blocksize\": 64"), 15, "\"blocksize\": 48");
    json->bytes.assign(text.begin(), text.end());
    EXPECT_THAT(error_of(sd), HasSubstr("blocksize must be a power of two"));
  }
  {
    std::vector<NamedTensor> sd = good;
    NamedTensor* json = Find(sd, "weight.quant_state.bitsandbytes__nf4");
    std::string text(json->bytes.begin(), json->bytes.end());
    text.replace(text.find("\"dtype\""), 7, "\"dtypo\"");
    json->bytes.assign(text.begin(), text.end());
    EXPECT_THAT(error_of(sd), HasSubstr("unknown quant-state key \"dtypo\""));
  }
  {
    std::vector<NamedTensor> sd = good;
    Find(sd, "weight.quant_state.bitsandbytes__nf4")->name =
        std::string(kPrefix) + ".weight.quant_state.bitsandbytes__fp4";
    EXPECT_THAT(error_of(sd), HasSubstr("does not match the key suffix"));
  }
  {
    std::vector<NamedTensor> sd = good;
    sd.erase(sd.begin() + 4);  // nested_absmax
    EXPECT_THAT(error_of(sd), HasSubstr("nested_offset present"));
  }
  EXPECT_EQ(FromStateDict({}, kPrefix).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kbitd::quant
