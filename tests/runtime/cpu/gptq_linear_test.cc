// The CPU backend's Linear on GPTQ weights (every case of tests/data/gptq/layers.safetensors: bits
// 2/3/4/8, act order, partial groups, both zero formats) equals, bit for bit, its Linear on the
// generator's dequantized float32 weight served dense, for one and many tokens; broken GPTQ
// tensors are refused naming the tensor. (The shared backend harnesses cannot hold GPTQ yet: the
// CUDA backend refuses it.)
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/model_weights.h"

namespace kbitd::runtime {
namespace {

const std::string kGptq = std::string(KBITD_TEST_DATA_DIR) + "/gptq";

// One fixture case as host tensors: the GPTQ weight and the dense float32 twin.
struct Case {
  std::string name;
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;
  std::vector<float> dequant, bias;
  LinearWeight gptq, dense;
};

template <typename T>
std::vector<T> Read(const SafetensorsFile& file, const std::string& name) {
  auto view = file.Get(name);
  EXPECT_TRUE(view.ok()) << name;
  std::vector<T> out(view->data.size() / sizeof(T));
  std::memcpy(out.data(), view->data.data(), view->data.size());
  return out;
}

std::vector<std::unique_ptr<Case>> Cases() {
  std::ifstream in(kGptq + "/layers.json");
  std::stringstream text;
  text << in.rdbuf();
  auto json = ParseJson(text.str());
  EXPECT_TRUE(json.ok()) << json.status();
  auto file = SafetensorsFile::Open(kGptq + "/layers.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<std::unique_ptr<Case>> cases;
  std::mt19937 rng(15);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [name, spec] : json->object()) {
    auto c = std::make_unique<Case>();
    c->name = name;
    const int64_t in = spec.Find("in_features")->integer_value();
    const int64_t out = spec.Find("out_features")->integer_value();
    const int bits = static_cast<int>(spec.Find("bits")->integer_value());
    c->qweight = Read<int32_t>(**file, name + ".qweight");
    c->qzeros = Read<int32_t>(**file, name + ".qzeros");
    c->scales = Read<uint16_t>(**file, name + ".scales");
    c->g_idx = Read<int32_t>(**file, name + ".g_idx");
    c->dequant = Read<float>(**file, name + ".dequant");
    for (int64_t n = 0; n < out; ++n) c->bias.push_back(normal(rng));
    LinearWeight& g = c->gptq;
    g.name = name;
    g.quant_type = quant::QuantType::kGptq;
    g.out_features = out;
    g.in_features = in;
    g.gptq.bits = bits;
    g.gptq.group_size = spec.Find("group_size")->integer_value();
    g.gptq.zero_format =
        *quant::GptqZeroFormatFromName(spec.Find("checkpoint_format")->string_value());
    const int64_t groups = g.gptq_groups();
    g.qweight =
        Tensor::Host(c->qweight.data(), ScalarType::kInt32, {quant::GptqWords(in, bits), out});
    g.qzeros =
        Tensor::Host(c->qzeros.data(), ScalarType::kInt32, {groups, quant::GptqWords(out, bits)});
    g.scales = Tensor::Host(c->scales.data(), ScalarType::kFloat16, {groups, out});
    g.g_idx = Tensor::Host(c->g_idx.data(), ScalarType::kInt32, {in});
    g.bias = Tensor::Host(c->bias.data(), ScalarType::kFloat32, {out});
    LinearWeight& d = c->dense;
    d.name = name + ".dense";
    d.out_features = out;
    d.in_features = in;
    d.dense = Tensor::Host(c->dequant.data(), ScalarType::kFloat32, {out, in});
    d.bias = g.bias;
    cases.push_back(std::move(c));
  }
  EXPECT_GE(cases.size(), 8u);
  return cases;
}

TEST(GptqLinearTest, EqualsTheDequantizedWeightServedDense) {
  CpuBackend backend(2);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& c : Cases()) {
    SCOPED_TRACE(c->name);
    const int64_t in = c->gptq.in_features, out = c->gptq.out_features;
    for (int64_t m : {1, 3, 9}) {
      std::vector<float> x(m * in), got(m * out, -1.0f), want(m * out, -2.0f);
      for (float& v : x) v = normal(rng);
      const Tensor tx = Tensor::Host(x.data(), ScalarType::kFloat32, {m, in});
      ASSERT_TRUE(backend.Linear(c->gptq, tx, Tensor::F32(got.data(), {m, out})).ok());
      ASSERT_TRUE(backend.Linear(c->dense, tx, Tensor::F32(want.data(), {m, out})).ok());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
          << m << " tokens";
    }
  }
}

// The GPTQ fields of a weight without its storage (Buffers are not copyable; these views own none).
LinearWeight Copy(const LinearWeight& g) {
  LinearWeight w;
  w.name = g.name;
  w.quant_type = g.quant_type;
  w.out_features = g.out_features;
  w.in_features = g.in_features;
  w.gptq = g.gptq;
  w.qweight = g.qweight;
  w.qzeros = g.qzeros;
  w.scales = g.scales;
  w.g_idx = g.g_idx;
  w.bias = g.bias;
  return w;
}

TEST(GptqLinearTest, BrokenWeightsAreRefusedNamingTheTensor) {
  CpuBackend backend(1);
  auto cases = Cases();
  Case& c = *cases.front();
  const int64_t in = c.gptq.in_features, out = c.gptq.out_features;
  std::vector<float> x(in, 1.0f), y(out);
  const Tensor tx = Tensor::Host(x.data(), ScalarType::kFloat32, {1, in});
  const Tensor ty = Tensor::F32(y.data(), {1, out});
  auto expect = [&](const LinearWeight& w, const std::string& text) {
    absl::Status s = backend.Linear(w, tx, ty);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find(text), std::string::npos) << s;
  };
  ASSERT_TRUE(backend.Linear(c.gptq, tx, ty).ok());
  {
    std::vector<int32_t> g_idx = c.g_idx;
    g_idx[in - 1] = static_cast<int32_t>(c.gptq.gptq_groups());
    LinearWeight w = Copy(c.gptq);
    w.g_idx = Tensor::Host(g_idx.data(), ScalarType::kInt32, {in});
    expect(w, absl::StrCat("g_idx[", in - 1, "] = ", c.gptq.gptq_groups(), " is outside"));
  }
  {
    LinearWeight w = Copy(c.gptq);
    w.qweight = Tensor::Host(c.qweight.data(), ScalarType::kInt32, {1, out});
    expect(w, "qweight is [1, " + std::to_string(out) + "] int32");
  }
  {
    LinearWeight w = Copy(c.gptq);
    w.scales = Tensor::Host(c.scales.data(), ScalarType::kBFloat16, {c.gptq.gptq_groups(), out});
    expect(w, "scales is");
  }
  {
    LinearWeight w = Copy(c.gptq);
    w.qzeros = Tensor();
    expect(w, "qzeros is undefined");
  }
  {
    LinearWeight w = Copy(c.gptq);
    w.gptq.bits = 5;
    expect(w, "bits 5 is not supported");
  }
}

}  // namespace
}  // namespace kbitd::runtime
