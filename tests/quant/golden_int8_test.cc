// kbitd's LLM.int8() CPU reference vs bitsandbytes 0.50.2 CUDA (tests/data/quant): row-wise weight
// codes and SCB, activation codes/outlier columns, and the Linear8bitLt forward output.
#include <cmath>
#include <iostream>
#include <vector>

#include "gtest/gtest.h"
#include "quant/encode.h"
#include "quant/int8_rowwise.h"
#include "tests/quant/golden_data.h"

namespace kbitd::quant {
namespace {

using golden::Goldens;
using golden::LoadTensor;
using golden::SameFloat;

// A differing int8 code must come from a product within 2 ulp of a .5 rounding boundary (bnb uses
// __fdividef for 127/absmax).
bool RoundsNearby(float v, int want) {
  return golden::EncodesNearby(v, 2, want, [](float x) { return RoundToInt8(x); });
}

float HalfValue(float v) { return HalfToFloat(FloatToHalf(v)); }

TEST(GoldenInt8Test, RowwiseWeightsMatchBnb) {
  int64_t mismatches = 0;
  for (const JsonValue* c : Goldens::Get().CasesOfKind("int8_weight")) {
    SCOPED_TRACE(c->Find("name")->string_value());
    const golden::Tensor w = LoadTensor(*c, "input");
    const int64_t rows = w.shape[0], cols = w.shape[1];
    std::vector<int8_t> cb(rows * cols);
    std::vector<float> scb(rows);
    ASSERT_TRUE(
        QuantizeRowwiseInt8(w.bytes.data(), w.dtype, rows, cols, cb.data(), scb.data()).ok());
    const std::vector<int8_t> bnb_cb = LoadTensor(*c, "cb").As<int8_t>();
    const std::vector<float> bnb_scb = LoadTensor(*c, "scb").As<float>();
    EXPECT_EQ(scb, bnb_scb);
    const std::vector<float> wf = w.Floats();
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (cb[i] == bnb_cb[i]) continue;
      ++mismatches;
      EXPECT_TRUE(RoundsNearby(HalfValue(wf[i]) * Int8Scale(scb[i / cols]), bnb_cb[i])) << i;
    }
    std::vector<float> deq(rows * cols);
    ASSERT_TRUE(DequantizeRowwiseInt8(bnb_cb.data(), bnb_scb.data(), rows, cols,
                                      ScalarType::kFloat32, deq.data())
                    .ok());
    const std::vector<float> bnb_deq = LoadTensor(*c, "dequant_cuda").As<float>();
    for (int64_t i = 0; i < rows * cols; ++i) ASSERT_TRUE(SameFloat(deq[i], bnb_deq[i])) << i;
  }
  std::cout << "int8 weights: " << mismatches << " codes differ, each within 2 ulp of a .5 tie\n";
}

TEST(GoldenInt8Test, ActivationsAndOutlierColumnsMatchBnb) {
  for (const JsonValue* c : Goldens::Get().CasesOfKind("int8_act")) {
    SCOPED_TRACE(c->Find("name")->string_value());
    const golden::Tensor x = LoadTensor(*c, "input");
    const int64_t m = x.shape[0], k = x.shape[1];
    const float threshold = static_cast<float>(c->Find("threshold")->number_value());
    auto act = QuantizeActivationsInt8(x.bytes.data(), x.dtype, m, k, threshold);
    ASSERT_TRUE(act.ok()) << act.status();
    EXPECT_EQ(act->sca, LoadTensor(*c, "sca").As<float>());
    EXPECT_EQ(act->outlier_cols, LoadTensor(*c, "outlier_cols").As<int64_t>());
    if (threshold > 0) {
      EXPECT_FALSE(act->outlier_cols.empty());
    }
    const std::vector<int8_t> bnb_ca = LoadTensor(*c, "ca").As<int8_t>();
    const std::vector<float> xf = x.Floats();
    for (int64_t i = 0; i < m * k; ++i) {
      if (act->ca[i] == bnb_ca[i]) continue;
      EXPECT_TRUE(RoundsNearby(xf[i] * Int8Scale(act->sca[i / k]), bnb_ca[i])) << i;
    }
  }
}

TEST(GoldenInt8Test, Linear8bitLtForwardMatchesBnb) {
  int64_t exact = 0, total = 0, ca_ties = 0, exact_given_codes = 0;
  for (const JsonValue* c : Goldens::Get().CasesOfKind("linear8bit")) {
    const std::string name = c->Find("name")->string_value();
    SCOPED_TRACE(name);
    const golden::Tensor x = LoadTensor(*c, "input");
    const ScalarType dtype = golden::DtypeOf(*c);
    const int64_t m = c->Find("m")->integer_value(), k = c->Find("k")->integer_value(),
                  n = c->Find("n")->integer_value();
    const float threshold = static_cast<float>(c->Find("threshold")->number_value());
    // Every case of a dtype shares one weight, stored with the threshold-6, m=7 case.
    const JsonValue* wc =
        Goldens::Get().Case("lin8_" + std::string(TorchDtypeName(dtype)) + "_t6_m7");
    ASSERT_NE(wc, nullptr);
    const golden::Tensor w = LoadTensor(*wc, "weight");
    std::vector<int8_t> cb(n * k);
    std::vector<float> scb(n);
    ASSERT_TRUE(QuantizeRowwiseInt8(w.bytes.data(), dtype, n, k, cb.data(), scb.data()).ok());
    // bnb's codes may differ at .5 ties (__fdividef); the forward uses bnb's own codes.
    const std::vector<int8_t> bnb_cb = LoadTensor(*c, "cb").As<int8_t>();
    const std::vector<float> wf = w.Floats();
    for (int64_t i = 0; i < n * k; ++i) {
      if (cb[i] != bnb_cb[i]) {
        EXPECT_TRUE(RoundsNearby(HalfValue(wf[i]) * Int8Scale(scb[i / k]), bnb_cb[i])) << i;
      }
    }
    cb = bnb_cb;
    const golden::Tensor bias = LoadTensor(*c, "bias");
    std::vector<uint8_t> y(m * n * ScalarTypeSize(dtype));
    ASSERT_TRUE(Int8Linear(x.bytes.data(), dtype, m, k, cb.data(), scb.data(), n, bias.bytes.data(),
                           threshold, y.data())
                    .ok());
    const std::vector<float> want = LoadTensor(*c, "y_cuda").Floats();
    auto act = QuantizeActivationsInt8(x.bytes.data(), dtype, m, k, threshold);
    ASSERT_TRUE(act.ok());
    const std::vector<float> xf = x.Floats();
    const float ulp = dtype == ScalarType::kBFloat16  ? 0x1p-7f
                      : dtype == ScalarType::kFloat16 ? 0x1p-10f
                                                      : 0x1p-23f;
    for (int64_t i = 0; i < m * n; ++i) {
      const float got = LoadAsFloat(y.data(), dtype, i);
      ++total;
      if (SameFloat(got, want[i])) {
        ++exact;
        continue;
      }
      // Explanation required: (a) activation codes of row r at a .5 tie (bnb's __fdividef may
      // round them the other way; each moves C by |cb[o, j]|), and/or (b) the outlier correction
      // (cuBLAS addmm sums in its own order): at most one rounding of the output dtype.
      const int64_t r = i / n, o = i % n;
      float bound = 2 * ulp * std::fabs(want[i]);
      const float scale = Int8Scale(act->sca[r]);
      for (int64_t j = 0; j < k; ++j) {
        const float v = HalfValue(xf[r * k + j]) * scale;
        if (act->ca[r * k + j] != 0 &&
            RoundsNearby(v, act->ca[r * k + j] + (v > act->ca[r * k + j] ? 1 : -1))) {
          bound += std::fabs(static_cast<float>(cb[o * k + j])) * act->sca[r] * scb[o] *
                   kInt8MatmulDequantScale;
        }
      }
      const bool explained = std::fabs(got - want[i]) <= bound &&
                             (bound > 2 * ulp * std::fabs(want[i]) || !act->outlier_cols.empty());
      EXPECT_TRUE(explained) << "element " << i << ": kbitd " << got << " bnb " << want[i]
                             << " bound " << bound;
    }
    // bnb's own activation codes: SCA identical, codes differ only at ties; fed with bnb's codes,
    // the int8 matmul + dequant reproduces bnb bit for bit (threshold 0: the whole output).
    EXPECT_EQ(scb, LoadTensor(*c, "scb").As<float>());
    const std::vector<int8_t> bnb_ca = LoadTensor(*c, "ca").As<int8_t>();
    const std::vector<float> bnb_sca = LoadTensor(*c, "sca").As<float>();
    EXPECT_EQ(act->sca, bnb_sca);
    for (int64_t i = 0; i < m * k; ++i) {
      if (act->ca[i] != bnb_ca[i]) {
        ++ca_ties;
        EXPECT_TRUE(RoundsNearby(HalfValue(xf[i]) * Int8Scale(act->sca[i / k]), bnb_ca[i])) << i;
      }
    }
    if (threshold == 0.0f) {
      std::vector<uint8_t> y2(m * n * ScalarTypeSize(dtype));
      ASSERT_TRUE(Int8MatmulDequant(bnb_ca.data(), bnb_sca.data(), m, k, cb.data(), scb.data(), n,
                                    bias.bytes.data(), dtype, y2.data())
                      .ok());
      EXPECT_EQ(y2, LoadTensor(*c, "y_cuda").bytes) << "given bnb's codes";
      ++exact_given_codes;
    }
    if (golden::HasTensor(*c, "c_int32")) {
      const std::vector<int32_t> c32 = LoadTensor(*c, "c_int32").As<int32_t>();
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t o = 0; o < n; ++o) {
          int32_t acc = 0;
          for (int64_t j = 0; j < k; ++j) acc += bnb_ca[r * k + j] * cb[o * k + j];
          ASSERT_EQ(acc, c32[r * n + o]) << "cuBLASLt int8 GEMM is exact";
        }
      }
      // bnb's CPU int8_mm_dequant multiplies by 6.200124e-05 instead of f32(1/16129).
      const std::vector<float> cpu = LoadTensor(*c, "y_cpu_mm_dequant").Floats();
      int64_t differ = 0;
      for (int64_t i = 0; i < m * n; ++i) differ += !SameFloat(cpu[i], want[i]);
      std::cout << name << ": bnb CPU int8_mm_dequant differs from CUDA in " << differ << " of "
                << m * n << " outputs\n";
    }
  }
  EXPECT_EQ(exact_given_codes, 6);
  std::cout << "Linear8bitLt: " << ca_ties << " activation codes differ from bnb at .5 ties\n";
  std::cout << "Linear8bitLt: " << exact << " of " << total
            << " outputs bit-identical to bnb CUDA\n";
}

}  // namespace
}  // namespace kbitd::quant
