// GPTQ unpacking and dequantization against tests/data/gptq/layers.safetensors, written by
// tools/golden/make_gptq_fixtures.py with NumPy from the unpacked codes (never from the packed
// words): bits 2/3/4/8, sym/asym, checkpoint_format gptq (zero - 1) and gptq_v2, act order,
// partial last groups, v1 zeros of 0. Plus the layout's corner cases and the state-dict errors.
#include "quant/gptq.h"

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "gtest/gtest.h"
#include "quant/quant_state.h"

namespace kbitd::quant {
namespace {

std::string DataDir() {
  const char* env = std::getenv("KBITD_TEST_DATA_DIR");
  return std::string(env != nullptr ? env : KBITD_TEST_DATA_DIR) + "/gptq";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The tensors of a safetensors file (8-byte header size, JSON header, data), read without
// runtime/ (quant's tests link quant only).
std::map<std::string, NamedTensor> ReadSafetensors(const std::string& path) {
  const std::string file = ReadFile(path);
  std::map<std::string, NamedTensor> tensors;
  uint64_t header_size = 0;
  EXPECT_GE(file.size(), 8u) << path;
  if (file.size() < 8) return tensors;
  std::memcpy(&header_size, file.data(), 8);
  auto header = ParseJson(file.substr(8, header_size));
  EXPECT_TRUE(header.ok()) << header.status();
  if (!header.ok()) return tensors;
  const size_t data = 8 + header_size;
  for (const auto& [name, info] : header->object()) {
    if (name == "__metadata__") continue;
    NamedTensor t;
    t.name = name;
    auto dtype = ScalarTypeFromSafetensorsName(info.Find("dtype")->string_value());
    EXPECT_TRUE(dtype.ok()) << name;
    t.dtype = *dtype;
    for (const JsonValue& d : info.Find("shape")->array()) t.shape.push_back(d.integer_value());
    const auto& offsets = info.Find("data_offsets")->array();
    t.bytes.assign(file.begin() + data + offsets[0].integer_value(),
                   file.begin() + data + offsets[1].integer_value());
    tensors[name] = std::move(t);
  }
  return tensors;
}

struct Case {
  std::string name;
  GptqParams params;
  int64_t in = 0, out = 0;
};

class GptqFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tensors_ =
        new std::map<std::string, NamedTensor>(ReadSafetensors(DataDir() + "/layers.safetensors"));
    auto json = ParseJson(ReadFile(DataDir() + "/layers.json"));
    ASSERT_TRUE(json.ok()) << json.status();
    cases_ = new std::vector<Case>();
    for (const auto& [name, c] : json->object()) {
      Case k;
      k.name = name;
      k.params.bits = static_cast<int>(c.Find("bits")->integer_value());
      k.params.group_size = c.Find("group_size")->integer_value();
      k.params.zero_format = *GptqZeroFormatFromName(c.Find("checkpoint_format")->string_value());
      k.in = c.Find("in_features")->integer_value();
      k.out = c.Find("out_features")->integer_value();
      cases_->push_back(k);
    }
  }

  // The four GPTQ tensors of a case, named "<case>.qweight" etc.
  static std::vector<NamedTensor> StateDict(const std::string& name) {
    std::vector<NamedTensor> out;
    for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
      out.push_back(tensors_->at(name + suffix));
    }
    return out;
  }
  static std::vector<float> Dequant(const std::string& name) {
    const NamedTensor& t = tensors_->at(name + ".dequant");
    std::vector<float> out(t.bytes.size() / 4);
    std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
    return out;
  }

  static std::map<std::string, NamedTensor>* tensors_;
  static std::vector<Case>* cases_;
};
std::map<std::string, NamedTensor>* GptqFixture::tensors_ = nullptr;
std::vector<Case>* GptqFixture::cases_ = nullptr;

TEST_F(GptqFixture, CoversEveryBitWidthFormatAndActOrder) {
  std::map<int, int> bits;
  std::map<GptqZeroFormat, int> formats;
  for (const Case& c : *cases_) {
    ++bits[c.params.bits];
    ++formats[c.params.zero_format];
  }
  EXPECT_EQ(bits.size(), 4u);
  EXPECT_EQ(formats.size(), 2u);
}

TEST_F(GptqFixture, DequantizesExactlyAsTheGeneratorInFloat32) {
  for (const Case& c : *cases_) {
    SCOPED_TRACE(c.name);
    auto state = GptqFromStateDict(StateDict(c.name), c.name, c.params);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(state->type, QuantType::kGptq);
    EXPECT_EQ(state->shape, (std::vector<int64_t>{c.out, c.in}));
    EXPECT_EQ(state->dtype, ScalarType::kFloat16);
    const std::vector<float> want = Dequant(c.name);
    std::vector<float> got(want.size());
    ASSERT_TRUE(DequantizeState(*state, ScalarType::kFloat32, got.data()).ok());
    int mismatches = 0;
    for (size_t i = 0; i < want.size(); ++i) mismatches += FloatBits(got[i]) != FloatBits(want[i]);
    EXPECT_EQ(mismatches, 0);
  }
}

TEST_F(GptqFixture, HalfAndBfloat16OutputsRoundTheFloat32ValuesOnce) {
  for (const Case& c : *cases_) {
    SCOPED_TRACE(c.name);
    auto state = GptqFromStateDict(StateDict(c.name), c.name, c.params);
    ASSERT_TRUE(state.ok()) << state.status();
    const std::vector<float> want = Dequant(c.name);
    std::vector<uint16_t> half(want.size()), bf16(want.size());
    ASSERT_TRUE(DequantizeState(*state, ScalarType::kFloat16, half.data()).ok());
    ASSERT_TRUE(DequantizeState(*state, ScalarType::kBFloat16, bf16.data()).ok());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(half[i], FloatToHalf(want[i])) << i;
      ASSERT_EQ(bf16[i], FloatToBFloat16(want[i])) << i;
    }
  }
}

TEST_F(GptqFixture, AnyBlockOfRowsEqualsTheWholeDequantization) {
  for (const Case& c : *cases_) {
    SCOPED_TRACE(c.name);
    auto state = GptqFromStateDict(StateDict(c.name), c.name, c.params);
    ASSERT_TRUE(state.ok()) << state.status();
    const GptqView view = state->gptq->View(c.out, c.in);
    const std::vector<float> want = Dequant(c.name);
    for (int64_t first : {int64_t{0}, int64_t{1}, c.out - 3}) {
      std::vector<float> rows(3 * c.in);
      DequantizeGptqRows(view, first, 3, rows.data());
      EXPECT_EQ(std::memcmp(rows.data(), want.data() + first * c.in, rows.size() * 4), 0)
          << "rows from " << first;
    }
  }
}

// 3-bit codes 10 and 21 of each 32 straddle words: code 10 is bits 30..32 of the column's stream.
TEST(GptqLayoutTest, ThreeBitCodesStraddleWords) {
  // Column stride 2: word i of column 0 is words[2 * i].
  const int32_t words[] = {static_cast<int32_t>(0xC0000000u), -1, 0x1, -1,
                           static_cast<int32_t>(0x3u << 0),   -1};
  EXPECT_EQ(GptqField(words, 2, 10, 3), 7u);  // low 2 bits at bits 30-31, high bit in word 1
  EXPECT_EQ(GptqField(words, 2, 9, 3), 0u);
  EXPECT_EQ(GptqField(words, 2, 11, 3), 0u);
  EXPECT_EQ(GptqField(words, 2, 21, 3), 6u);  // bit 63 = 0 (word 1 bit 31), bits 64-65 = 11
  EXPECT_EQ(GptqField(words, 2, 22, 3), 0u);
  const int32_t eight[] = {static_cast<int32_t>(0x80FF017Fu)};
  EXPECT_EQ(GptqField(eight, 1, 0, 8), 0x7Fu);
  EXPECT_EQ(GptqField(eight, 1, 1, 8), 0x01u);
  EXPECT_EQ(GptqField(eight, 1, 3, 8), 0x80u);  // the sign bit is data, not sign extension
}

// A v1 field of all ones is zero 0 (stored 0 - 1 modulo 2^bits); v2 reads it as 2^bits - 1.
TEST(GptqLayoutTest, ZeroPointConventions) {
  const int32_t qzeros[] = {static_cast<int32_t>(0xF0u | 0x3u)};  // 4-bit fields 3, 15, 0, ...
  GptqView view;
  view.bits = 4;
  view.out_features = 8;
  view.groups = 1;
  view.qzeros = qzeros;
  view.zero_format = GptqZeroFormat::kV1;
  EXPECT_EQ(GptqZero(view, 0, 0), 4u);
  EXPECT_EQ(GptqZero(view, 0, 1), 0u);
  EXPECT_EQ(GptqZero(view, 0, 2), 1u);
  view.zero_format = GptqZeroFormat::kV2;
  EXPECT_EQ(GptqZero(view, 0, 0), 3u);
  EXPECT_EQ(GptqZero(view, 0, 1), 15u);
  EXPECT_EQ(GptqZero(view, 0, 2), 0u);
}

TEST(GptqLayoutTest, NamesAndGroups) {
  EXPECT_EQ(*GptqZeroFormatFromName("gptq"), GptqZeroFormat::kV1);
  EXPECT_EQ(*GptqZeroFormatFromName("gptq_v2"), GptqZeroFormat::kV2);
  EXPECT_EQ(GptqZeroFormatName(GptqZeroFormat::kV2), "gptq_v2");
  EXPECT_EQ(GptqZeroFormatFromName("marlin").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GptqGroups(96, 40), 3);
  EXPECT_EQ(GptqGroups(96, -1), 1);
  EXPECT_EQ(GptqGroups(96, 32), 3);
  for (int bits : {2, 3, 4, 8}) EXPECT_TRUE(ValidateGptqBits(bits).ok()) << bits;
  for (int bits : {0, 1, 5, 6, 7, 16}) {
    EXPECT_EQ(ValidateGptqBits(bits).code(), absl::StatusCode::kInvalidArgument) << bits;
  }
  EXPECT_EQ(ValidateGptqGroupSize(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateGptqGroupSize(-1).ok());
  EXPECT_EQ(QuantTypeName(QuantType::kGptq), "gptq");
}

void ExpectError(const absl::StatusOr<QuantState>& s, absl::StatusCode code,
                 const std::string& text) {
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), code) << s.status();
  EXPECT_NE(std::string(s.status().message()).find(text), std::string::npos) << s.status();
}

NamedTensor* Find(std::vector<NamedTensor>& sd, const std::string& suffix) {
  for (NamedTensor& t : sd) {
    if (t.name.size() >= suffix.size() &&
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return &t;
    }
  }
  return nullptr;
}

TEST_F(GptqFixture, BadStateDictsNameTheTensor) {
  const std::string p = "b4_asym_v1_act_partial";  // in 96, out 32, group 40: 3 groups
  GptqParams params;
  params.bits = 4;
  params.group_size = 40;
  {
    std::vector<NamedTensor> sd = StateDict(p);
    sd.erase(sd.begin() + 1);  // qzeros
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kNotFound, p + ".qzeros");
  }
  {
    std::vector<NamedTensor> sd = StateDict(p);
    int32_t bad = 3;
    std::memcpy(Find(sd, ".g_idx")->bytes.data() + 5 * 4, &bad, 4);
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".g_idx: g_idx[5] = 3 is outside [0, 3)");
    bad = -1;
    std::memcpy(Find(sd, ".g_idx")->bytes.data() + 5 * 4, &bad, 4);
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "g_idx[5] = -1");
  }
  {
    // group_size 32 wants 3 groups too; 48 wants 2, but scales and qzeros have 3 rows.
    GptqParams other = params;
    other.group_size = 48;
    ExpectError(GptqFromStateDict(StateDict(p), p, other), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".scales: expected F16 [2, 32], got F16 [3, 32]");
  }
  {
    GptqParams other = params;
    other.bits = 8;  // qweight holds 4-bit codes: 48 rows, not 24
    ExpectError(GptqFromStateDict(StateDict(p), p, other), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".qweight: expected I32 [24, 32], got I32 [12, 32]");
    other.bits = 5;
    ExpectError(GptqFromStateDict(StateDict(p), p, other), absl::StatusCode::kInvalidArgument,
                "bits 5 is not supported");
  }
  {
    std::vector<NamedTensor> sd = StateDict(p);
    NamedTensor* qzeros = Find(sd, ".qzeros");
    qzeros->shape = {3, 2};
    qzeros->bytes.resize(3 * 2 * 4);
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".qzeros: expected I32 [3, 4], got I32 [3, 2]");
  }
  {
    std::vector<NamedTensor> sd = StateDict(p);
    NamedTensor* scales = Find(sd, ".scales");
    scales->dtype = ScalarType::kBFloat16;
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".scales: expected F16 [3, 32], got BF16 [3, 32]");
  }
  {
    std::vector<NamedTensor> sd = StateDict(p);
    NamedTensor* g_idx = Find(sd, ".g_idx");  // 80 rows: not a multiple of 32
    g_idx->shape = {80};
    g_idx->bytes.resize(80 * 4);
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".g_idx: in_features 80 is not a positive multiple of 32");
  }
  {
    std::vector<NamedTensor> sd = StateDict(p);
    NamedTensor* qweight = Find(sd, ".qweight");
    qweight->dtype = ScalarType::kInt64;
    ExpectError(GptqFromStateDict(sd, p, params), absl::StatusCode::kInvalidArgument,
                "tensor " + p + ".qweight: expected I32");
  }
}

}  // namespace
}  // namespace kbitd::quant
