// The op-by-op test suite every Backend instantiates: each op of runtime/backend.h runs on tensors
// on the backend's device (allocated from its pool, filled and read back through its CopyTo) and
// is compared with a float64 reference computed here (backend_reference.h). A backend's test
// binary includes this header and writes
//   INSTANTIATE_TEST_SUITE_P(Cpu, BackendOpsTest, testing::Values(CpuBackendTestParam()),
//                            BackendTestName);
// with its own BackendTestParam (tolerances; activations come in ActivationDtype of the param's
// compute dtype, so a GPU backend is tested in bfloat16). The error contract is
// backend_errors_harness.h.
//
// Not covered, because the contract has no such op or layout: sliding-window attention and 8-bit
// blockwise linear weights (a LinearWeight cannot hold them; backend_errors_harness.h checks the
// backend refuses one).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/double_quant.h"
#include "quant/int8_rowwise.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "runtime/model_weights.h"
#include "runtime/sampler.h"
#include "tests/runtime/backend_reference.h"
#include "tests/runtime/backend_test_param.h"

namespace kbitd::test {

class BackendOpsTest : public BackendTestBase {
 protected:
  // Rounds *values to the activation dtype (what the reference must use) and puts them on the
  // device as a [rows, cols] activation.
  runtime::Tensor Activations(std::vector<float>* values, int64_t rows, int64_t cols) {
    *values = RoundedTo(*values, activation_dtype());
    return tensors().Floats(*values, activation_dtype(), {rows, cols});
  }
  runtime::Tensor Floats32(const std::vector<float>& values) {
    return tensors().Floats(values, ScalarType::kFloat32, {static_cast<int64_t>(values.size())});
  }
  // Runs Linear into a fresh [m, out] tensor of `y_dtype` and returns what it wrote.
  std::vector<float> RunLinear(const runtime::LinearWeight& w, const runtime::Tensor& x,
                               ScalarType y_dtype) {
    runtime::Tensor y = tensors().Empty(y_dtype, {x.dim(0), w.out_features});
    absl::Status s = backend().Linear(w, x, y);
    EXPECT_TRUE(s.ok()) << s;
    return tensors().DownloadFloats(y);
  }
  // A linear weight of shape [out, in] with its bias (if any) on the device.
  runtime::LinearWeight Weight(int64_t out, int64_t in, const std::vector<float>& bias) {
    runtime::LinearWeight w;
    w.name = "test.linear";
    w.out_features = out;
    w.in_features = in;
    if (!bias.empty()) w.bias = Floats32(bias);
    return w;
  }
};

TEST_P(BackendOpsTest, CopyToMovesBytesBetweenHostAndDevice) {
  std::vector<uint8_t> bytes(4 * 6 * 4);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + 11);
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16, ScalarType::kFloat16,
                           ScalarType::kInt32, ScalarType::kInt8, ScalarType::kUInt8}) {
    SCOPED_TRACE(TorchDtypeName(dtype));
    const int64_t n = static_cast<int64_t>(bytes.size() / ScalarTypeSize(dtype));
    runtime::Tensor on_device = tensors().Upload(bytes.data(), dtype, {n});
    EXPECT_EQ(on_device.device, device());
    // Device to device (the same device), then back to the host.
    runtime::Tensor copy = tensors().Empty(dtype, {n});
    ASSERT_TRUE(backend().CopyTo(on_device, copy).ok());
    EXPECT_EQ(tensors().DownloadBytes(copy), bytes);
  }
  // Host to host is allowed too (each side is on the host or on the device).
  std::vector<uint8_t> host(bytes.size());
  ASSERT_TRUE(backend()
                  .CopyTo(runtime::Tensor::Host(bytes.data(), ScalarType::kUInt8, {96}),
                          runtime::Tensor::Make(host.data(), ScalarType::kUInt8, {96}))
                  .ok());
  ASSERT_TRUE(backend().Synchronize().ok());
  EXPECT_EQ(host, bytes);
}

TEST_P(BackendOpsTest, EmbeddingLooksUpRowsOfEveryTableDtype) {
  const int64_t vocab = 11, hidden = 20;
  const std::vector<int32_t> ids = {3, 0, 10, 3};
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16, ScalarType::kFloat16}) {
    SCOPED_TRACE(TorchDtypeName(dtype));
    const std::vector<float> table = RoundedTo(NormalFloats(vocab * hidden, 1), dtype);
    runtime::Tensor embed = tensors().Floats(table, dtype, {vocab, hidden});
    runtime::Tensor tokens = tensors().Ints(ids, {4});
    runtime::Tensor out = tensors().Empty(activation_dtype(), {4, hidden});
    ASSERT_TRUE(backend().Embedding(embed, tokens, out).ok());
    Reference ref;
    for (int32_t id : ids) {
      for (int64_t i = 0; i < hidden; ++i) ref.want.push_back(table[id * hidden + i]);
    }
    ref.scale = ref.want;
    for (double& s : ref.scale) s = std::abs(s);
    ExpectClose(tensors().DownloadFloats(out), ref, GetParam().elementwise, activation_dtype());
  }
}

TEST_P(BackendOpsTest, DenseLinearMatchesReference) {
  const int64_t out = 24, in = 40;
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16, ScalarType::kFloat16}) {
    for (bool with_bias : {false, true}) {
      for (int64_t m : {1, 6}) {
        SCOPED_TRACE(
            absl::StrCat(std::string(TorchDtypeName(dtype)), with_bias ? " bias" : "", " m=", m));
        const std::vector<float> w_values = RoundedTo(NormalFloats(out * in, 2, 0.2f), dtype);
        const std::vector<float> bias = with_bias ? NormalFloats(out, 3) : std::vector<float>();
        std::vector<float> x = NormalFloats(m * in, 4);
        runtime::LinearWeight w = Weight(out, in, bias);
        w.dense = tensors().Floats(w_values, dtype, {out, in});
        runtime::Tensor x_dev = Activations(&x, m, in);
        ExpectClose(RunLinear(w, x_dev, activation_dtype()),
                    LinearReference(x, w_values, bias, m, out, in), GetParam().reduction,
                    activation_dtype());
      }
    }
  }
}

// The lm_head writes float32 logits whatever the activation dtype.
TEST_P(BackendOpsTest, LinearWritesFloat32Logits) {
  const int64_t out = 16, in = 32, m = 2;
  const std::vector<float> w_values =
      RoundedTo(NormalFloats(out * in, 5, 0.2f), activation_dtype());
  std::vector<float> x = NormalFloats(m * in, 6);
  runtime::LinearWeight w = Weight(out, in, {});
  w.dense = tensors().Floats(w_values, activation_dtype(), {out, in});
  runtime::Tensor x_dev = Activations(&x, m, in);
  ExpectClose(RunLinear(w, x_dev, ScalarType::kFloat32),
              LinearReference(x, w_values, {}, m, out, in), GetParam().reduction,
              ScalarType::kFloat32);
}

// NF4 and FP4, with and without double quant and bias, over shapes that take each path of a
// kernel: few and many tokens, blocks that straddle rows, an odd element count (a padded last
// nibble) and more than one nested absmax group.
TEST_P(BackendOpsTest, FourBitLinearMatchesReference) {
  struct Shape {
    int64_t m, out, in, blocksize;
  };
  const Shape shapes[] = {
      {1, 16, 128, 64},
      {6, 16, 128, 64},
      {2, 5, 96, 64},
      {3, 3, 33, 32},
      {2, 40, 256, 32},
      // CUDA: one fused pass (16 rows), two (27), and past the fused kernel (33 rows).
      {16, 32, 192, 64},
      {27, 32, 128, 64},
      {33, 16, 128, 64}};
  for (quant::FourBitType type : {quant::FourBitType::kNf4, quant::FourBitType::kFp4}) {
    for (bool nested : {false, true}) {
      for (bool with_bias : {false, true}) {
        for (const Shape& s : shapes) {
          SCOPED_TRACE(absl::StrCat(std::string(quant::FourBitTypeName(type)),
                                    nested ? " nested" : "", with_bias ? " bias" : "", " m=", s.m,
                                    " out=", s.out, " in=", s.in, " blocksize=", s.blocksize));
          const int64_t n = s.out * s.in, blocks = quant::NumBlocks(n, s.blocksize);
          const std::vector<float> dense = NormalFloats(n, 7, 0.5f);
          std::vector<uint8_t> packed(quant::Packed4bitBytes(n));
          std::vector<float> absmax(blocks);
          ASSERT_TRUE(quant::Quantize4bit(type, dense.data(), ScalarType::kFloat32, n, s.blocksize,
                                          packed.data(), absmax.data())
                          .ok());
          const std::vector<float> bias = with_bias ? NormalFloats(s.out, 8) : std::vector<float>();
          runtime::LinearWeight w = Weight(s.out, s.in, bias);
          w.quant_type =
              type == quant::FourBitType::kNf4 ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
          const auto& code = type == quant::FourBitType::kNf4 ? quant::Nf4Code() : quant::Fp4Code();
          std::copy(code.begin(), code.end(), w.code.begin());
          w.blocksize = s.blocksize;
          w.packed = tensors().Upload(packed.data(), ScalarType::kUInt8,
                                      {static_cast<int64_t>(packed.size())});
          if (nested) {
            absl::StatusOr<quant::NestedAbsmax> q =
                quant::DoubleQuantizeAbsmax(absmax.data(), blocks);
            ASSERT_TRUE(q.ok()) << q.status();
            w.absmax_codes = tensors().Upload(q->codes.data(), ScalarType::kUInt8, {blocks});
            w.nested_absmax = Floats32(q->nested_absmax);
            std::copy(q->nested_code.begin(), q->nested_code.end(), w.nested_code.begin());
            w.nested_offset = q->offset;
            w.nested_blocksize = q->nested_blocksize;
            // The reference dequantizes with the absmax the weight now encodes.
            ASSERT_TRUE(quant::ReconstructAbsmax(*q, blocks, absmax.data()).ok());
          } else {
            w.absmax = Floats32(absmax);
          }
          std::vector<float> w_values(n);
          ASSERT_TRUE(quant::Dequantize4bit(type, packed.data(), absmax.data(), n, s.blocksize,
                                            ScalarType::kFloat32, w_values.data())
                          .ok());
          std::vector<float> x = NormalFloats(s.m * s.in, 9);
          runtime::Tensor x_dev = Activations(&x, s.m, s.in);
          ExpectClose(RunLinear(w, x_dev, activation_dtype()),
                      LinearReference(x, w_values, bias, s.m, s.out, s.in), GetParam().reduction,
                      activation_dtype());
        }
      }
    }
  }
}

// LLM.int8 without outliers, with outlier columns decomposed, and with decomposition disabled
// (threshold 0) although large values are present.
// Quantize-on-load gives the bytes of quant/'s CPU reference (itself checked against
// bitsandbytes' goldens) on every backend, for each input dtype; blocks that straddle rows and an
// odd element count included.
TEST_P(BackendOpsTest, QuantizeOnLoadGivesTheReferenceBytes) {
  const int64_t rows = 37, cols = 129, n = rows * cols, blocksize = 64;
  const int64_t blocks = quant::NumBlocks(n, blocksize);
  const int64_t groups = quant::NumBlocks(blocks, quant::kNestedBlocksize);
  std::vector<float> values = NormalFloats(n, 77, 0.5f);
  values[5] = 40.0f;  // an outlier, so blocks differ in scale
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16, ScalarType::kFloat16}) {
    SCOPED_TRACE(TorchDtypeName(dtype));
    const std::vector<uint8_t> host = EncodeFloats(values, dtype);
    const runtime::Tensor dense = tensors().Upload(host.data(), dtype, {rows, cols});
    for (quant::FourBitType type : {quant::FourBitType::kNf4, quant::FourBitType::kFp4}) {
      std::vector<uint8_t> want_packed(quant::Packed4bitBytes(n));
      std::vector<float> want_absmax(blocks);
      ASSERT_TRUE(quant::Quantize4bit(type, host.data(), dtype, n, blocksize, want_packed.data(),
                                      want_absmax.data())
                      .ok());
      runtime::Tensor packed = tensors().Empty(ScalarType::kUInt8, {quant::Packed4bitBytes(n)});
      runtime::Tensor absmax = tensors().Empty(ScalarType::kFloat32, {blocks});
      ASSERT_TRUE(backend().Quantize4bit(type, dense, blocksize, packed, absmax).ok());
      EXPECT_EQ(tensors().DownloadBytes(packed), want_packed);
      EXPECT_EQ(tensors().DownloadFloats(absmax), want_absmax);

      absl::StatusOr<quant::NestedAbsmax> want_nested =
          quant::DoubleQuantizeAbsmax(want_absmax.data(), blocks);
      ASSERT_TRUE(want_nested.ok());
      runtime::Tensor codes = tensors().Empty(ScalarType::kUInt8, {blocks});
      runtime::Tensor nested_absmax = tensors().Empty(ScalarType::kFloat32, {groups});
      runtime::Tensor offset = tensors().Empty(ScalarType::kFloat32, {1});
      ASSERT_TRUE(backend().DoubleQuantize(absmax, codes, nested_absmax, offset).ok());
      EXPECT_EQ(tensors().DownloadBytes(codes), want_nested->codes);
      EXPECT_EQ(tensors().DownloadFloats(nested_absmax), want_nested->nested_absmax);
      EXPECT_EQ(tensors().DownloadFloats(offset), std::vector<float>{want_nested->offset});
    }
    std::vector<int8_t> want_cb(n);
    std::vector<float> want_scb(rows);
    ASSERT_TRUE(
        quant::QuantizeRowwiseInt8(host.data(), dtype, rows, cols, want_cb.data(), want_scb.data())
            .ok());
    runtime::Tensor cb = tensors().Empty(ScalarType::kInt8, {rows, cols});
    runtime::Tensor scb = tensors().Empty(ScalarType::kFloat32, {rows});
    ASSERT_TRUE(backend().QuantizeRowwiseInt8(dense, cb, scb).ok());
    const std::vector<uint8_t> got_cb = tensors().DownloadBytes(cb);
    EXPECT_EQ(std::vector<int8_t>(got_cb.begin(), got_cb.end()), want_cb);
    EXPECT_EQ(tensors().DownloadFloats(scb), want_scb);
  }
  // Shapes that do not fit are refused, naming the op.
  const runtime::Tensor dense = tensors().Floats(values, ScalarType::kFloat32, {rows, cols});
  runtime::Tensor short_packed =
      tensors().Empty(ScalarType::kUInt8, {quant::Packed4bitBytes(n) - 1});
  runtime::Tensor absmax = tensors().Empty(ScalarType::kFloat32, {blocks});
  const absl::Status refused =
      backend().Quantize4bit(quant::FourBitType::kNf4, dense, blocksize, short_packed, absmax);
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_NE(refused.message().find("Quantize4bit"), std::string::npos) << refused;
}

TEST_P(BackendOpsTest, Int8LinearMatchesReference) {
  const int64_t out = 12, in = 64;
  struct Case {
    const char* name;
    float threshold;
    bool outliers;
  };
  for (const Case& c : {Case{"no outliers", 6.0f, false}, Case{"outliers", 6.0f, true},
                        Case{"decomposition off", 0.0f, true}}) {
    for (bool with_bias : {false, true}) {
      for (int64_t m : {1, 5}) {
        SCOPED_TRACE(absl::StrCat(c.name, with_bias ? " bias" : "", " m=", m));
        const std::vector<float> dense = NormalFloats(out * in, 10, 0.3f);
        std::vector<int8_t> cb(out * in);
        std::vector<float> scb(out);
        ASSERT_TRUE(quant::QuantizeRowwiseInt8(dense.data(), ScalarType::kFloat32, out, in,
                                               cb.data(), scb.data())
                        .ok());
        const std::vector<float> bias = with_bias ? NormalFloats(out, 11) : std::vector<float>();
        runtime::LinearWeight w = Weight(out, in, bias);
        w.quant_type = quant::QuantType::kInt8Rowwise;
        w.cb = tensors().Upload(cb.data(), ScalarType::kInt8, {out, in});
        w.scb = Floats32(scb);
        w.threshold = c.threshold;
        std::vector<float> x = NormalFloats(m * in, 12);
        if (c.outliers) {
          // Columns 5 and 40 of every other token far above the threshold: quantizing them with
          // the rest would cost the other columns most of their precision.
          for (int64_t t = 0; t < m; t += 2) {
            x[t * in + 5] = 24.0f;
            x[t * in + 40] = -17.5f;
          }
        }
        runtime::Tensor x_dev = Activations(&x, m, in);
        ExpectClose(
            RunLinear(w, x_dev, activation_dtype()),
            Int8LinearReference(x, cb, scb, bias, c.threshold, activation_dtype(), m, out, in),
            GetParam().int8, activation_dtype());
      }
    }
  }
}

TEST_P(BackendOpsTest, RmsNormMatchesReference) {
  const int64_t rows = 3, n = 48;
  const float eps = 1e-5f;
  std::vector<float> x = NormalFloats(rows * n, 13);
  for (int64_t i = 0; i < n; ++i) {
    x[n + i] = 0.0f;         // a zero row: eps alone keeps it finite
    x[2 * n + i] *= 300.0f;  // a large one
  }
  const std::vector<float> weight = NormalFloats(n, 14);
  runtime::Tensor x_dev = Activations(&x, rows, n);
  runtime::Tensor y = tensors().Empty(activation_dtype(), {rows, n});
  ASSERT_TRUE(backend().RmsNorm(x_dev, Floats32(weight), eps, y).ok());
  ExpectClose(tensors().DownloadFloats(y), RmsNormReference(x, weight, eps, rows, n),
              GetParam().elementwise, activation_dtype());
}

TEST_P(BackendOpsTest, RopeRotatesQueriesAndKeysInPlace) {
  const int64_t rows = 5, heads = 4, kv_heads = 2, head_dim = 16;
  const std::vector<int32_t> positions = {0, 1, 7, 300, 4095};
  std::vector<float> inv_freq(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / head_dim);
  }
  std::vector<float> q = NormalFloats(rows * heads * head_dim, 15);
  std::vector<float> k = NormalFloats(rows * kv_heads * head_dim, 16);
  runtime::Tensor q_dev = Activations(&q, rows, heads * head_dim);
  runtime::Tensor k_dev = Activations(&k, rows, kv_heads * head_dim);
  ASSERT_TRUE(
      backend()
          .Rope(q_dev, k_dev, head_dim, tensors().Ints(positions, {rows}), Floats32(inv_freq))
          .ok());
  ExpectClose(tensors().DownloadFloats(q_dev),
              RopeReference(q, positions, inv_freq, rows, heads * head_dim, head_dim),
              GetParam().elementwise, activation_dtype());
  ExpectClose(tensors().DownloadFloats(k_dev),
              RopeReference(k, positions, inv_freq, rows, kv_heads * head_dim, head_dim),
              GetParam().elementwise, activation_dtype());
}

TEST_P(BackendOpsTest, SiluMulMatchesReference) {
  const int64_t rows = 3, n = 40;
  std::vector<float> gate = NormalFloats(rows * n, 17, 4.0f);
  gate[0] = -30.0f;
  gate[1] = 30.0f;
  std::vector<float> up = NormalFloats(rows * n, 18);
  runtime::Tensor gate_dev = Activations(&gate, rows, n);
  runtime::Tensor up_dev = Activations(&up, rows, n);
  runtime::Tensor out = tensors().Empty(activation_dtype(), {rows, n});
  ASSERT_TRUE(backend().SiluMul(gate_dev, up_dev, out).ok());
  Reference ref;
  for (int64_t i = 0; i < rows * n; ++i) {
    const double g = gate[i];
    ref.want.push_back(g / (1.0 + std::exp(-g)) * up[i]);
    ref.scale.push_back(std::abs(ref.want.back()));
  }
  ExpectClose(tensors().DownloadFloats(out), ref, GetParam().elementwise, activation_dtype());
}

TEST_P(BackendOpsTest, AddAccumulatesIntoItsFirstOperand) {
  const int64_t rows = 3, n = 40;
  std::vector<float> x = NormalFloats(rows * n, 19);
  std::vector<float> y = NormalFloats(rows * n, 20);
  runtime::Tensor x_dev = Activations(&x, rows, n);
  ASSERT_TRUE(backend().Add(x_dev, Activations(&y, rows, n)).ok());
  Reference ref;
  for (int64_t i = 0; i < rows * n; ++i) {
    ref.want.push_back(static_cast<double>(x[i]) + y[i]);
    ref.scale.push_back(std::abs(x[i]) + std::abs(y[i]));
  }
  ExpectClose(tensors().DownloadFloats(x_dev), ref, GetParam().elementwise, activation_dtype());
}

// RoundTo is exact on every backend: a rounding to the dtype, then to the activation dtype.
TEST_P(BackendOpsTest, RoundToRoundsToEachDtypeExactly) {
  // Values that each 16-bit dtype rounds differently: a bfloat16 tie, fp16 subnormals, fp16
  // overflow, and values the two formats hold exactly.
  const std::vector<float> values = {1.0f + 0x1p-9f, 1.0f + 0x1p-12f, 1e-6f, 3e-8f,
                                     70000.0f,       -65520.0f,       0.1f,  -2.5f,
                                     0.0f,           1234.567f};
  const int64_t n = static_cast<int64_t>(values.size());
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16, ScalarType::kFloat16}) {
    SCOPED_TRACE(TorchDtypeName(dtype));
    std::vector<float> x = values;
    runtime::Tensor x_dev = Activations(&x, 1, n);
    ASSERT_TRUE(backend().RoundTo(x_dev, dtype).ok());
    const std::vector<float> want = RoundedTo(RoundedTo(x, dtype), activation_dtype());
    const std::vector<float> got = tensors().DownloadFloats(x_dev);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(got[i], want[i]) << "element " << i << ": " << x[i];
  }
}

TEST_P(BackendOpsTest, GatherRowsCopiesTheListedRows) {
  const int64_t rows = 5, n = 12;
  std::vector<float> x = NormalFloats(rows * n, 21);
  runtime::Tensor x_dev = Activations(&x, rows, n);
  const std::vector<int32_t> picked = {4, 0, 4};
  runtime::Tensor out = tensors().Empty(activation_dtype(), {3, n});
  ASSERT_TRUE(backend().GatherRows(x_dev, tensors().Ints(picked, {3}), out).ok());
  std::vector<float> want;
  for (int32_t r : picked) want.insert(want.end(), x.begin() + r * n, x.begin() + (r + 1) * n);
  EXPECT_EQ(tensors().DownloadFloats(out), want);
}

TEST_P(BackendOpsTest, GreedySampleGivesPickGreedysTokenAndLogprob) {
  // A vocabulary larger than one CUDA block's stride, a tie (the lower index wins), a NaN that
  // must not win (its row's logprob is NaN), and an all-NaN row (token 0).
  const int64_t vocab = 3001;
  std::vector<float> logits = NormalFloats(4 * vocab, 23);
  logits[0 * vocab + 2500] = 9.f;
  logits[1 * vocab + 17] = 7.f;
  logits[1 * vocab + 2999] = 7.f;
  logits[2 * vocab + 5] = std::numeric_limits<float>::quiet_NaN();
  logits[2 * vocab + 6] = 5.f;
  for (int64_t i = 0; i < vocab; ++i)
    logits[3 * vocab + i] = std::numeric_limits<float>::quiet_NaN();
  runtime::Tensor tokens = tensors().Empty(ScalarType::kInt32, {4});
  runtime::Tensor logprobs = tensors().Empty(ScalarType::kFloat32, {4});
  ASSERT_TRUE(backend()
                  .GreedySample(tensors().Floats(logits, ScalarType::kFloat32, {4, vocab}), tokens,
                                logprobs)
                  .ok());
  const std::vector<uint8_t> token_bytes = tensors().DownloadBytes(tokens);
  const std::vector<float> got_logprobs = tensors().DownloadFloats(logprobs);
  const std::vector<int32_t> want_tokens = {2500, 17, 6, 0};
  for (int r = 0; r < 4; ++r) {
    int32_t token = 0;
    std::memcpy(&token, token_bytes.data() + 4 * r, 4);
    const runtime::GreedyChoice want = runtime::PickGreedy(logits.data() + r * vocab, vocab);
    EXPECT_EQ(want.token, want_tokens[r]) << "row " << r;
    EXPECT_EQ(token, want.token) << "row " << r;
    if (r >= 2) {  // a NaN logit makes the softmax NaN, as torch's log_softmax does
      EXPECT_TRUE(std::isnan(got_logprobs[r])) << "row " << r;
    } else {
      EXPECT_NEAR(got_logprobs[r], want.logprob, 1e-6f) << "row " << r;
      EXPECT_LT(got_logprobs[r], 0.f);
    }
  }
  EXPECT_FALSE(backend()
                   .GreedySample(tensors().Floats(logits, ScalarType::kFloat32, {4, vocab}),
                                 tensors().Empty(ScalarType::kInt32, {3}), logprobs)
                   .ok());
}

TEST_P(BackendOpsTest, PrefetchLeavesALayerReadyToUse) {
  const int64_t out = 8, in = 16;
  const std::vector<float> w_values = RoundedTo(NormalFloats(out * in, 22), activation_dtype());
  runtime::LayerWeights layer;
  layer.input_layernorm = Floats32(NormalFloats(in, 23));
  layer.post_attention_layernorm = Floats32(NormalFloats(in, 24));
  for (runtime::LinearWeight* w : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
                                   &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
    *w = Weight(out, in, {});
    w->dense = tensors().Floats(w_values, activation_dtype(), {out, in});
  }
  ASSERT_TRUE(backend().Prefetch(layer).ok());
  std::vector<float> x = NormalFloats(in, 25);
  runtime::Tensor x_dev = Activations(&x, 1, in);
  ExpectClose(RunLinear(layer.down_proj, x_dev, activation_dtype()),
              LinearReference(x, w_values, {}, 1, out, in), GetParam().reduction,
              activation_dtype());
  EXPECT_TRUE(backend().Synchronize().ok());
}

// Paged KV: one batch of three sequences of different lengths (a prefill from 0, a decode token
// after 9 cached ones, a prefill chunk after 3 cached ones), out of order, over block tables whose
// blocks are neither contiguous nor ascending, with GQA (two query heads per KV head). The cache is
// filled with a sentinel first, so reading a slot nobody wrote shows up in the attention output.
TEST_P(BackendOpsTest, WriteKvAndAttentionFollowTheBlockTables) {
  const int64_t heads = 4, kv_heads = 2, head_dim = 16, block_size = 4, num_blocks = 16;
  const int64_t layer = 1, width = kv_heads * head_dim, max_blocks = 4;
  // Stored in the cache's dtype, so compared as that dtype holds it.
  const float sentinel = RoundedTo({1e4f}, kv_dtype())[0];
  runtime::KvCache::Options options{.num_layers = 2,
                                    .num_kv_heads = kv_heads,
                                    .head_dim = head_dim,
                                    .block_size = block_size,
                                    .num_blocks = num_blocks,
                                    .dtype = kv_dtype()};
  absl::StatusOr<std::unique_ptr<runtime::KvCache>> made =
      runtime::KvCache::Create(options, pool(), "backend_test");
  ASSERT_TRUE(made.ok()) << made.status();
  runtime::KvCache& cache = **made;
  const int64_t layer_elements = num_blocks * block_size * width;
  const std::vector<uint8_t> filled =
      EncodeFloats(std::vector<float>(layer_elements, sentinel), kv_dtype());
  for (int64_t l = 0; l < 2; ++l) {
    for (const runtime::Tensor& kv : {cache.keys(l), cache.values(l)}) {
      runtime::Tensor src = kv;
      src.data = const_cast<uint8_t*>(filled.data());
      src.device = runtime::Device::Cpu();
      ASSERT_TRUE(backend().CopyTo(src, kv).ok());
    }
  }
  ASSERT_TRUE(backend().Synchronize().ok());

  // Row s: the physical blocks of sequence s, zero-padded.
  const std::vector<int32_t> tables = {9, 2,  0,  0,   // 5 tokens
                                       0, 13, 5,  0,   // 10 tokens
                                       7, 3,  11, 0};  // 10 tokens
  runtime::Tensor tables_dev = tensors().Ints(tables, {3, max_blocks});
  // Every key / value written so far, by sequence and position (as stored in the cache dtype).
  std::vector<std::vector<std::vector<float>>> keys(3), values(3);
  uint32_t seed = 100;
  // One step: WriteKv of the given (sequence, position) tokens; returns its queries' inputs.
  auto write_step = [&](const std::vector<std::pair<int32_t, int32_t>>& batch,
                        runtime::StepInputs* step) {
    const int64_t t = static_cast<int64_t>(batch.size());
    std::vector<int32_t> seqs, positions;
    for (auto [s, p] : batch) {
      seqs.push_back(s);
      positions.push_back(p);
    }
    std::vector<float> k = NormalFloats(t * width, ++seed);
    std::vector<float> v = NormalFloats(t * width, ++seed);
    runtime::Tensor k_dev = Activations(&k, t, width);
    runtime::Tensor v_dev = Activations(&v, t, width);
    step->tokens = tensors().Ints(std::vector<int32_t>(t, 0), {t});
    step->positions = tensors().Ints(positions, {t});
    step->token_sequence = tensors().Ints(seqs, {t});
    step->block_tables = tables_dev;
    step->logit_rows = tensors().Ints({0}, {1});
    const absl::Status s = backend().WriteKv(cache, layer, k_dev, v_dev, *step);
    EXPECT_TRUE(s.ok()) << s;
    for (int64_t i = 0; i < t; ++i) {
      auto [seq, pos] = batch[i];
      keys[seq].resize(std::max<size_t>(keys[seq].size(), pos + 1));
      values[seq].resize(std::max<size_t>(values[seq].size(), pos + 1));
      keys[seq][pos] = RoundedTo({k.begin() + i * width, k.begin() + (i + 1) * width}, kv_dtype());
      values[seq][pos] =
          RoundedTo({v.begin() + i * width, v.begin() + (i + 1) * width}, kv_dtype());
    }
  };
  std::vector<std::pair<int32_t, int32_t>> history, batch;
  for (int32_t p = 0; p < 9; ++p) history.push_back({1, p});
  for (int32_t p = 0; p < 3; ++p) history.push_back({2, p});
  batch.push_back({1, 9});
  for (int32_t p = 3; p < 10; ++p) batch.push_back({2, p});
  for (int32_t p = 0; p < 5; ++p) batch.push_back({0, p});
  runtime::StepInputs step;
  write_step(history, &step);
  write_step(batch, &step);
  ASSERT_FALSE(HasFailure());

  // The cache holds each written row in its slot and the sentinel everywhere else.
  const std::vector<float> stored_keys = tensors().DownloadFloats(cache.keys(layer));
  const std::vector<float> stored_values = tensors().DownloadFloats(cache.values(layer));
  std::vector<bool> written(num_blocks * block_size, false);
  for (int32_t s = 0; s < 3; ++s) {
    for (size_t p = 0; p < keys[s].size(); ++p) {
      const int64_t slot = tables[s * max_blocks + p / block_size] * block_size + p % block_size;
      written[slot] = true;
      for (int64_t i = 0; i < width; ++i) {
        ASSERT_EQ(stored_keys[slot * width + i], keys[s][p][i]) << "seq " << s << " pos " << p;
        ASSERT_EQ(stored_values[slot * width + i], values[s][p][i]) << "seq " << s << " pos " << p;
      }
    }
  }
  for (int64_t slot = 0; slot < num_blocks * block_size; ++slot) {
    if (written[slot]) continue;
    for (int64_t i = 0; i < width; ++i) {
      ASSERT_EQ(stored_keys[slot * width + i], sentinel) << "slot " << slot;
      ASSERT_EQ(stored_values[slot * width + i], sentinel) << "slot " << slot;
    }
  }
  // The other layer is untouched.
  for (float v : tensors().DownloadFloats(cache.keys(0))) ASSERT_EQ(v, sentinel);

  const int64_t t = static_cast<int64_t>(batch.size());
  std::vector<float> q = NormalFloats(t * heads * head_dim, 200);
  runtime::Tensor q_dev = Activations(&q, t, heads * head_dim);
  runtime::Tensor out = tensors().Empty(activation_dtype(), {t, heads * head_dim});
  const absl::Status s = backend().Attention(
      cache, layer, q_dev, step,
      {.num_heads = heads, .num_kv_heads = kv_heads, .head_dim = head_dim}, out);
  ASSERT_TRUE(s.ok()) << s;
  std::vector<AttentionToken> tokens;
  for (int64_t i = 0; i < t; ++i) {
    auto [seq, pos] = batch[i];
    AttentionToken token;
    token.q.assign(q.begin() + i * heads * head_dim, q.begin() + (i + 1) * heads * head_dim);
    token.keys.assign(keys[seq].begin(), keys[seq].begin() + pos + 1);  // causal
    token.values.assign(values[seq].begin(), values[seq].begin() + pos + 1);
    tokens.push_back(std::move(token));
  }
  ExpectClose(tensors().DownloadFloats(out), AttentionReference(tokens, heads, kv_heads, head_dim),
              GetParam().reduction, activation_dtype());
}

}  // namespace kbitd::test
