// The error contract of runtime/backend.h, for every backend: an op handed a tensor of the wrong
// shape, dtype or device, or an index outside what it reads, returns INVALID_ARGUMENT (or
// UNIMPLEMENTED) naming the op, and never crashes or writes out of bounds. Each test starts from
// arguments the op accepts (checked first, so a refusal is the one argument's doing) and breaks
// one thing at a time. A backend's test binary instantiates it with its BackendTestParam:
//   INSTANTIATE_TEST_SUITE_P(Cpu, BackendErrorsTest, testing::Values(CpuBackendTestParam()),
//                            BackendTestName);
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "quant/codebooks.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "runtime/model_weights.h"
#include "tests/runtime/backend_test_param.h"

namespace kbitd::test {

class BackendErrorsTest : public BackendTestBase {
 protected:
  // A device that is not the backend's: the view keeps its (valid) data, so a backend that
  // forgot the check would run on it rather than crash the suite.
  runtime::Tensor Elsewhere(runtime::Tensor t) {
    t.device = device().is_cpu() ? runtime::Device::Cuda(7) : runtime::Device::Cpu();
    return t;
  }
  runtime::Tensor Act(int64_t rows, int64_t cols) {
    return tensors().Floats(std::vector<float>(rows * cols, 0.5f), activation_dtype(),
                            {rows, cols});
  }
  runtime::Tensor F32(int64_t n) {
    return tensors().Floats(std::vector<float>(n, 1.0f), ScalarType::kFloat32, {n});
  }
  runtime::Tensor Bytes(ScalarType dtype, int64_t n) {
    return tensors().Upload(std::vector<uint8_t>(n * ScalarTypeSize(dtype), 0x11).data(), dtype,
                            {n});
  }
  // Runs `op` on good arguments (expecting OK), then on each broken variant (expecting refusal).
  // `make` builds the arguments; `breaks` each change one of them. The refusal may come from the
  // op or from the Synchronize after it: a GPU backend finds an index out of range on the device
  // and reports it when it next synchronises (runtime/backend.h).
  template <typename Args>
  void ExpectRefusals(const char* op, std::function<Args()> make,
                      std::function<absl::Status(Args&)> run,
                      std::vector<std::pair<const char*, std::function<void(Args&)>>> breaks) {
    Args good = make();
    const absl::Status ok = RunAndSynchronize(run, good);
    ASSERT_TRUE(ok.ok()) << op << " on good arguments: " << ok;
    for (auto& [what, mutate] : breaks) {
      SCOPED_TRACE(what);
      Args args = make();
      mutate(args);
      ExpectRefused(RunAndSynchronize(run, args), op);
      // The refusal is reported once: the backend is usable again.
      EXPECT_TRUE(backend().Synchronize().ok());
    }
  }
  template <typename Args>
  absl::Status RunAndSynchronize(std::function<absl::Status(Args&)>& run, Args& args) {
    absl::Status status = run(args);
    if (!status.ok()) return status;
    return backend().Synchronize();
  }
  static void ExpectRefused(const absl::Status& status, std::string op) {
    EXPECT_TRUE(absl::IsInvalidArgument(status) || absl::IsUnimplemented(status)) << status;
    std::string message(status.message());
    for (std::string* s : {&message, &op}) {
      std::transform(s->begin(), s->end(), s->begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    }
    EXPECT_NE(message.find(op), std::string::npos) << "does not name " << op << ": " << status;
  }
};

TEST_P(BackendErrorsTest, Embedding) {
  struct Args {
    runtime::Tensor table, tokens, out;
  };
  ExpectRefusals<Args>(
      "Embedding",
      [&] {
        return Args{tensors().Floats(std::vector<float>(40, 1.0f), ScalarType::kFloat32, {10, 4}),
                    tensors().Ints({0, 9}, {2}), Act(2, 4)};
      },
      [&](Args& a) { return backend().Embedding(a.table, a.tokens, a.out); },
      {{"int8 table",
        [&](Args& a) {
          a.table = tensors().Upload(std::vector<int8_t>(40).data(), ScalarType::kInt8, {10, 4});
        }},
       {"token = vocab",
        [&](Args& a) {
          a.tokens = tensors().Ints({0, 10}, {2});
        }},
       {"token < 0",
        [&](Args& a) {
          a.tokens = tensors().Ints({-1, 0}, {2});
        }},
       {"3 tokens for 2 rows",
        [&](Args& a) {
          a.tokens = tensors().Ints({0, 1, 2}, {3});
        }},
       {"int8 tokens", [&](Args& a) { a.tokens = Bytes(ScalarType::kInt8, 2); }},
       {"out width 5", [&](Args& a) { a.out = Act(2, 5); }},
       {"table elsewhere", [&](Args& a) { a.table = Elsewhere(a.table); }},
       {"tokens elsewhere", [&](Args& a) { a.tokens = Elsewhere(a.tokens); }},
       {"out elsewhere", [&](Args& a) { a.out = Elsewhere(a.out); }}});
}

// Linear weights of each format, [6, 64], with their tensors broken one at a time.
TEST_P(BackendErrorsTest, Linear) {
  const int64_t out = 6, in = 64, n = out * in;
  struct Args {
    runtime::LinearWeight w;
    runtime::Tensor x, y;
  };
  auto base = [&](std::optional<quant::QuantType> type) {
    Args a;
    a.w.name = "test.proj";
    a.w.quant_type = type;
    a.w.out_features = out;
    a.w.in_features = in;
    a.w.bias = F32(out);
    a.x = Act(3, in);
    a.y = Act(3, out);
    return a;
  };
  auto dense = [&] {
    Args a = base(std::nullopt);
    a.w.dense = tensors().Floats(std::vector<float>(n, 0.25f), activation_dtype(), {out, in});
    return a;
  };
  auto four_bit = [&](bool nested) {
    Args a = base(quant::QuantType::kNf4);
    a.w.code = quant::Nf4Code();  // a weight as the loader makes it: bnb's code books
    a.w.nested_code = quant::DynamicMap();
    a.w.blocksize = 32;
    a.w.packed = Bytes(ScalarType::kUInt8, n / 2);
    if (nested) {
      a.w.absmax_codes = Bytes(ScalarType::kUInt8, n / 32);
      a.w.nested_absmax = F32(1);
    } else {
      a.w.absmax = F32(n / 32);
    }
    return a;
  };
  auto int8 = [&] {
    Args a = base(quant::QuantType::kInt8Rowwise);
    a.w.cb = Bytes(ScalarType::kInt8, n);
    a.w.scb = F32(out);
    return a;
  };
  auto run = [&](Args& a) { return backend().Linear(a.w, a.x, a.y); };
  auto shapes = [&](std::vector<std::pair<const char*, std::function<void(Args&)>>> breaks) {
    breaks.push_back({"x width", [&](Args& a) { a.x = Act(3, in + 1); }});
    breaks.push_back({"y width", [&](Args& a) { a.y = Act(3, out + 1); }});
    breaks.push_back({"y rows", [&](Args& a) { a.y = Act(2, out); }});
    breaks.push_back({"x elsewhere", [&](Args& a) { a.x = Elsewhere(a.x); }});
    breaks.push_back({"bias count", [&](Args& a) { a.w.bias = F32(out - 1); }});
    breaks.push_back({"bias elsewhere", [&](Args& a) { a.w.bias = Elsewhere(a.w.bias); }});
    return breaks;
  };
  {
    SCOPED_TRACE("dense");
    ExpectRefusals<Args>(
        "Linear", dense, run,
        shapes(
            {{"int32 weight",
              [&](Args& a) {
                a.w.dense = tensors().Ints(std::vector<int32_t>(n), {out, in});
              }},
             {"transposed weight",
              [&](Args& a) {
                a.w.dense = tensors().Floats(std::vector<float>(n), activation_dtype(), {in, out});
              }},
             {"short weight",
              [&](Args& a) {
                a.w.dense =
                    tensors().Floats(std::vector<float>(n - in), activation_dtype(), {out - 1, in});
              }},
             {"no weight", [&](Args& a) { a.w.dense = runtime::Tensor(); }},
             {"weight elsewhere", [&](Args& a) { a.w.dense = Elsewhere(a.w.dense); }}}));
  }
  for (bool nested : {false, true}) {
    SCOPED_TRACE(nested ? "nf4 nested" : "nf4");
    ExpectRefusals<Args>(
        "Linear", [&] { return four_bit(nested); }, run,
        shapes(
            {{"packed short", [&](Args& a) { a.w.packed = Bytes(ScalarType::kUInt8, n / 2 - 1); }},
             {"no packed", [&](Args& a) { a.w.packed = runtime::Tensor(); }},
             {"packed elsewhere", [&](Args& a) { a.w.packed = Elsewhere(a.w.packed); }},
             {"absmax short",
              [&](Args& a) {
                if (nested) {
                  a.w.absmax_codes = Bytes(ScalarType::kUInt8, n / 32 - 1);
                } else {
                  a.w.absmax = F32(n / 32 - 1);
                }
              }},
             {"scales elsewhere", [&](Args& a) {
                if (nested) {
                  a.w.nested_absmax = Elsewhere(a.w.nested_absmax);
                } else {
                  a.w.absmax = Elsewhere(a.w.absmax);
                }
              }}}));
  }
  {
    SCOPED_TRACE("int8");
    ExpectRefusals<Args>(
        "Linear", int8, run,
        shapes({{"cb short", [&](Args& a) { a.w.cb = Bytes(ScalarType::kInt8, n - 1); }},
                {"scb short", [&](Args& a) { a.w.scb = F32(out - 1); }},
                {"cb elsewhere", [&](Args& a) { a.w.cb = Elsewhere(a.w.cb); }}}));
  }
  // 8-bit blockwise weights have no layout in LinearWeight: a backend refuses them.
  Args blockwise = base(quant::QuantType::kInt8Blockwise);
  ExpectRefused(run(blockwise), "Linear");
}

TEST_P(BackendErrorsTest, RmsNorm) {
  struct Args {
    runtime::Tensor x, weight, y;
  };
  ExpectRefusals<Args>(
      "RmsNorm",
      [&] {
        return Args{Act(2, 8), F32(8), Act(2, 8)};
      },
      [&](Args& a) { return backend().RmsNorm(a.x, a.weight, 1e-5f, a.y); },
      {{"weight count", [&](Args& a) { a.weight = F32(7); }},
       {"y width", [&](Args& a) { a.y = Act(2, 9); }},
       {"y rows", [&](Args& a) { a.y = Act(3, 8); }},
       {"weight elsewhere", [&](Args& a) { a.weight = Elsewhere(a.weight); }},
       {"y elsewhere", [&](Args& a) { a.y = Elsewhere(a.y); }}});
}

TEST_P(BackendErrorsTest, Rope) {
  struct Args {
    runtime::Tensor q, k, positions, inv_freq;
    int64_t head_dim = 8;
  };
  ExpectRefusals<Args>(
      "Rope",
      [&] {
        return Args{Act(2, 32), Act(2, 16), tensors().Ints({0, 5}, {2}), F32(4)};
      },
      [&](Args& a) { return backend().Rope(a.q, a.k, a.head_dim, a.positions, a.inv_freq); },
      {{"k rows", [&](Args& a) { a.k = Act(3, 16); }},
       {"positions count", [&](Args& a) { a.positions = tensors().Ints({0}, {1}); }},
       {"q width % head_dim", [&](Args& a) { a.q = Act(2, 36); }},
       {"k width % head_dim", [&](Args& a) { a.k = Act(2, 12); }},
       {"odd head_dim", [&](Args& a) { a.head_dim = 7; }},
       {"inv_freq count", [&](Args& a) { a.inv_freq = F32(3); }},
       {"positions elsewhere", [&](Args& a) { a.positions = Elsewhere(a.positions); }},
       {"q elsewhere", [&](Args& a) { a.q = Elsewhere(a.q); }}});
}

// A cache of 2 layers, 2 KV heads of 8, 4 blocks of 4 tokens; two sequences.
TEST_P(BackendErrorsTest, WriteKvAndAttention) {
  runtime::KvCache::Options options{.num_layers = 2,
                                    .num_kv_heads = 2,
                                    .head_dim = 8,
                                    .block_size = 4,
                                    .num_blocks = 4,
                                    .dtype = kv_dtype()};
  absl::StatusOr<std::unique_ptr<runtime::KvCache>> made =
      runtime::KvCache::Create(options, pool(), "backend_test");
  ASSERT_TRUE(made.ok()) << made.status();
  runtime::KvCache& cache = **made;
  struct Args {
    runtime::Tensor k, v, q, out;
    runtime::StepInputs step;
    int64_t layer = 1;
    runtime::AttentionShape shape{.num_heads = 4, .num_kv_heads = 2, .head_dim = 8};
  };
  auto make = [&] {
    Args a{Act(2, 16), Act(2, 16), Act(2, 32), Act(2, 32)};
    a.step.tokens = tensors().Ints({0, 0}, {2});
    a.step.positions = tensors().Ints({0, 4}, {2});
    a.step.token_sequence = tensors().Ints({0, 1}, {2});
    a.step.block_tables = tensors().Ints({2, 0, 1, 3}, {2, 2});
    a.step.logit_rows = tensors().Ints({0}, {1});
    return a;
  };
  // Both ops read the step alike.
  using Breaks = std::vector<std::pair<const char*, std::function<void(Args&)>>>;
  const Breaks step_breaks = {
      {"layer 2", [&](Args& a) { a.layer = 2; }},
      {"positions count", [&](Args& a) { a.step.positions = tensors().Ints({0}, {1}); }},
      {"position past the table",
       [&](Args& a) {
         a.step.positions = tensors().Ints({0, 8}, {2});
       }},
      {"negative position",
       [&](Args& a) {
         a.step.positions = tensors().Ints({-1, 0}, {2});
       }},
      {"sequence 2 of 2",
       [&](Args& a) {
         a.step.token_sequence = tensors().Ints({0, 2}, {2});
       }},
      {"block 4 of 4",
       [&](Args& a) {
         a.step.block_tables = tensors().Ints({2, 0, 1, 4}, {2, 2});
       }},
      {"block_tables elsewhere",
       [&](Args& a) { a.step.block_tables = Elsewhere(a.step.block_tables); }},
      {"positions elsewhere", [&](Args& a) { a.step.positions = Elsewhere(a.step.positions); }},
      {"token_sequence elsewhere",
       [&](Args& a) { a.step.token_sequence = Elsewhere(a.step.token_sequence); }}};
  {
    SCOPED_TRACE("WriteKv");
    Breaks breaks = step_breaks;
    breaks.push_back({"k width", [&](Args& a) { a.k = Act(2, 24); }});
    breaks.push_back({"v width", [&](Args& a) { a.v = Act(2, 8); }});
    breaks.push_back({"v rows", [&](Args& a) { a.v = Act(1, 16); }});
    breaks.push_back({"k elsewhere", [&](Args& a) { a.k = Elsewhere(a.k); }});
    ExpectRefusals<Args>(
        "WriteKv", make,
        [&](Args& a) { return backend().WriteKv(cache, a.layer, a.k, a.v, a.step); }, breaks);
  }
  {
    SCOPED_TRACE("Attention");
    Breaks breaks = step_breaks;
    // Attention reads every earlier position too.
    breaks.push_back({"earlier block 4 of 4", [&](Args& a) {
                        a.step.block_tables = tensors().Ints({2, 0, 4, 3}, {2, 2});
                      }});
    breaks.push_back({"q width", [&](Args& a) { a.q = Act(2, 24); }});
    breaks.push_back({"out rows", [&](Args& a) { a.out = Act(3, 32); }});
    breaks.push_back({"out width", [&](Args& a) { a.out = Act(2, 16); }});
    breaks.push_back({"kv heads unlike the cache's", [&](Args& a) {
                        a.shape = {.num_heads = 4, .num_kv_heads = 4, .head_dim = 8};
                      }});
    breaks.push_back({"head_dim unlike the cache's", [&](Args& a) {
                        a.shape = {.num_heads = 2, .num_kv_heads = 2, .head_dim = 16};
                      }});
    breaks.push_back({"heads not a multiple of kv heads", [&](Args& a) {
                        a.shape = {.num_heads = 3, .num_kv_heads = 2, .head_dim = 8};
                        a.q = Act(2, 24);
                        a.out = Act(2, 24);
                      }});
    breaks.push_back({"q elsewhere", [&](Args& a) { a.q = Elsewhere(a.q); }});
    ExpectRefusals<Args>(
        "Attention", make,
        [&](Args& a) { return backend().Attention(cache, a.layer, a.q, a.step, a.shape, a.out); },
        breaks);
  }
}

TEST_P(BackendErrorsTest, ElementwiseOps) {
  struct Args {
    runtime::Tensor a, b, out;
  };
  auto make = [&] { return Args{Act(2, 8), Act(2, 8), Act(2, 8)}; };
  ExpectRefusals<Args>("SiluMul", make, [&](Args& a) { return backend().SiluMul(a.a, a.b, a.out); },
                       {{"up size", [&](Args& a) { a.b = Act(2, 7); }},
                        {"out size", [&](Args& a) { a.out = Act(3, 8); }},
                        {"gate elsewhere", [&](Args& a) { a.a = Elsewhere(a.a); }}});
  ExpectRefusals<Args>("Add", make, [&](Args& a) { return backend().Add(a.a, a.b); },
                       {{"y size", [&](Args& a) { a.b = Act(2, 7); }},
                        {"x elsewhere", [&](Args& a) { a.a = Elsewhere(a.a); }}});
  ExpectRefused(backend().RoundTo(Act(2, 8), ScalarType::kInt8), "RoundTo");
  ExpectRefused(backend().RoundTo(Elsewhere(Act(2, 8)), ScalarType::kBFloat16), "RoundTo");
}

TEST_P(BackendErrorsTest, GatherRows) {
  struct Args {
    runtime::Tensor x, rows, out;
  };
  ExpectRefusals<Args>(
      "GatherRows",
      [&] {
        return Args{Act(3, 8), tensors().Ints({2, 0}, {2}), Act(2, 8)};
      },
      [&](Args& a) { return backend().GatherRows(a.x, a.rows, a.out); },
      {{"row 3 of 3",
        [&](Args& a) {
          a.rows = tensors().Ints({0, 3}, {2});
        }},
       {"row -1",
        [&](Args& a) {
          a.rows = tensors().Ints({-1, 0}, {2});
        }},
       {"out width", [&](Args& a) { a.out = Act(2, 9); }},
       {"out rows", [&](Args& a) { a.out = Act(3, 8); }},
       {"rows elsewhere", [&](Args& a) { a.rows = Elsewhere(a.rows); }}});
}

TEST_P(BackendErrorsTest, CopyTo) {
  struct Args {
    runtime::Tensor src, dst;
  };
  ExpectRefusals<Args>(
      "CopyTo",
      [&] {
        return Args{F32(8), F32(8)};
      },
      [&](Args& a) { return backend().CopyTo(a.src, a.dst); },
      {{"dst size", [&](Args& a) { a.dst = F32(7); }},
       {"dst dtype", [&](Args& a) { a.dst = tensors().Ints(std::vector<int32_t>(8), {8}); }},
       {"dst undefined", [&](Args& a) { a.dst.data = nullptr; }}});
  EXPECT_TRUE(backend().Synchronize().ok());
}

}  // namespace kbitd::test
