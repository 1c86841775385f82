// QuantState <-> bitsandbytes state dicts: the Linear4bit / Linear8bitLt state dicts saved by bnb
// 0.50.2 (tests/data/quant) are read, dequantized bit for bit and written back byte-identically;
// malformed states give clear errors.
#include "quant/quant_state.h"

#include <cmath>
#include <iostream>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/encode.h"
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

// The Linear4bit state dicts saved by bnb 0.50.2 (tools/golden/make_quant_goldens.py).
constexpr FourBitCase kFourBitCases[] = {
    {"sd_linear4bit_nf4_dq_bf16", QuantType::kNf4, true, ScalarType::kUInt8, ScalarType::kBFloat16},
    {"sd_linear4bit_fp4_bf16storage", QuantType::kFp4, false, ScalarType::kBFloat16,
     ScalarType::kBFloat16},
    {"sd_linear4bit_nf4_fp16", QuantType::kNf4, false, ScalarType::kUInt8, ScalarType::kFloat16},
};

TEST(QuantStateTest, Linear4bitStateDictsRoundTripAndDequantizeLikeBnb) {
  for (const FourBitCase& fc : kFourBitCases) {
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

TEST(QuantStateTest, QuantizeToStateReproducesBnbStateDicts) {
  int64_t threshold_mismatches = 0;
  for (const FourBitCase& fc : kFourBitCases) {
    SCOPED_TRACE(fc.name);
    const JsonValue* wc = Goldens::Get().Case(std::string(fc.name) + "_weights");
    ASSERT_NE(wc, nullptr);
    const golden::Tensor w = LoadTensor(*wc, "weight");
    QuantizeOptions options;
    options.type = fc.type;
    options.double_quant = fc.nested;
    options.quant_storage = fc.storage;
    auto state = QuantizeToState(w.bytes.data(), w.dtype, w.shape, options);
    ASSERT_TRUE(state.ok()) << state.status();
    auto written = ToStateDict(*state, kPrefix);
    ASSERT_TRUE(written.ok()) << written.status();
    const std::vector<NamedTensor> bnb = LoadStateDict(fc.name, /*with_bias=*/false);
    // Packed codes: bnb's, except where bnb's fast-math reciprocal decided differently within
    // 2 ulp of a threshold (bf16 weights over a bf16 absmax hit thresholds exactly, e.g. 5/24).
    const std::vector<uint8_t>& bnb_packed = bnb[0].bytes;
    ASSERT_EQ(state->data.size(), bnb_packed.size());
    // Plain (not nested) absmax, to scale the elements as the quantizer did.
    std::vector<float> absmax(NumBlocks(w.numel(), 64));
    std::vector<uint8_t> scratch(state->data.size());
    ASSERT_TRUE(Quantize4bit(FourBitType::kNf4, w.bytes.data(), w.dtype, w.numel(), 64,
                             scratch.data(), absmax.data())
                    .ok());
    const std::vector<float> wf = w.Floats();
    for (int64_t k = 0; k < w.numel(); ++k) {
      const int ours = k % 2 ? state->data[k / 2] & 0xF : state->data[k / 2] >> 4;
      const int theirs = k % 2 ? bnb_packed[k / 2] & 0xF : bnb_packed[k / 2] >> 4;
      if (ours == theirs) continue;
      ++threshold_mismatches;
      const float scaled = wf[k] * ReciprocalAbsmax(absmax[k / 64]);
      EXPECT_TRUE(golden::EncodesNearby(
          scaled, 2, theirs,
          [&](float v) { return fc.type == QuantType::kNf4 ? EncodeNf4(v) : EncodeFp4(v); }))
          << "element " << k;
    }
    (*written)[0].bytes = bnb_packed;  // the rest must match byte for byte
    if (!fc.nested) {
      ExpectSameStateDict(*written, bnb);
      continue;
    }
    // Double quant: everything but the offset's last bits is bnb's; compare the offset loosely
    // and the reconstructed absmax through the dequantized weight.
    auto bnb_state = FromStateDict(bnb, kPrefix);
    ASSERT_TRUE(bnb_state.ok());
    EXPECT_EQ(state->data, bnb_state->data);
    EXPECT_NEAR(state->nested->offset, bnb_state->nested->offset,
                1e-6f * bnb_state->nested->offset);
    std::vector<float> ours(w.numel()), theirs(w.numel());
    ASSERT_TRUE(DequantizeState(*state, ScalarType::kFloat32, ours.data()).ok());
    ASSERT_TRUE(DequantizeState(*bnb_state, ScalarType::kFloat32, theirs.data()).ok());
    for (int64_t i = 0; i < w.numel(); ++i) {
      EXPECT_NEAR(ours[i], theirs[i], 1e-3f * std::fabs(theirs[i]) + 1e-6f) << i;
    }
  }
  std::cout << "QuantizeToState: " << threshold_mismatches
            << " 4-bit codes differ from bnb's Linear4bit, each within 2 ulp of a threshold\n";
  EXPECT_LE(threshold_mismatches * 1000, 3 * 48 * 136) << "more than 0.1% of codes differ";
  // Linear8bitLt: the same int8 weight and SCB as bnb's state dict.
  const JsonValue* lc = Goldens::Get().Case("lin8_float16_t6_m7");
  ASSERT_NE(lc, nullptr);
  const golden::Tensor w8 = LoadTensor(*lc, "weight");
  auto int8 = QuantizeToState(w8.bytes.data(), w8.dtype, w8.shape,
                              QuantizeOptions{.type = QuantType::kInt8Rowwise});
  ASSERT_TRUE(int8.ok()) << int8.status();
  auto bnb8 = FromStateDict(LoadStateDict("sd_linear8bitlt_fp16"), kPrefix);
  ASSERT_TRUE(bnb8.ok());
  EXPECT_EQ(int8->scb, bnb8->scb);
  int64_t differ = 0;
  for (size_t i = 0; i < int8->data.size(); ++i) differ += int8->data[i] != bnb8->data[i];
  EXPECT_LE(differ, 5) << "codes may differ only at .5 ties (checked in golden_int8_test)";
  EXPECT_EQ(QuantizeToState(w8.bytes.data(), w8.dtype, {w8.numel()},
                            QuantizeOptions{.type = QuantType::kInt8Rowwise})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
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
