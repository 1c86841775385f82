#include "runtime/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/double_quant.h"
#include "quant/gptq.h"
#include "quant/int8_rowwise.h"
#include "runtime/cpu/cpu_checks.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/quantize_op_checks.h"
#include "runtime/sampler.h"

namespace kbitd::runtime {
namespace {

using cpu::CheckFloat32;
using cpu::CheckInt32;
using cpu::CheckKvCache;
using cpu::CheckMatrix;
using cpu::CheckSameSize;
using cpu::CheckSlots;
using cpu::CheckStep;
using cpu::Describe;

// Rows per parallel chunk: enough work per task to amortise the fork-join.
int64_t RowGrain(int64_t k, int64_t m) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * std::min<int64_t>(m, 8)));
}

}  // namespace

CpuBackend::CpuBackend(int num_threads) : device_(Device::Cpu()), pool_(num_threads) {}

absl::Status CpuBackend::Embedding(const Tensor& embed, const Tensor& tokens, Tensor out) {
  KBITD_RETURN_IF_ERROR(CheckMatrix("Embedding", "out", out, -1, -1));
  KBITD_RETURN_IF_ERROR(CheckInt32("Embedding", tokens, out.dim(0)));
  if (!embed.defined() || embed.rank != 2 || embed.dim(1) != out.dim(1) || !embed.device.is_cpu() ||
      (embed.dtype != ScalarType::kFloat32 && embed.dtype != ScalarType::kFloat16 &&
       embed.dtype != ScalarType::kBFloat16)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Embedding: table ", Describe(embed), " does not fill out ", Describe(out)));
  }
  const int64_t hidden = out.dim(1);
  const int32_t* ids = tokens.as<const int32_t>();
  for (int64_t t = 0; t < out.dim(0); ++t) {
    if (ids[t] < 0 || ids[t] >= embed.dim(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: token ", ids[t], " outside [0, ", embed.dim(0), ")"));
    }
    const int64_t base = static_cast<int64_t>(ids[t]) * hidden;
    float* dst = out.row(t);
    if (embed.dtype == ScalarType::kFloat32) {
      std::memcpy(dst, embed.as<const float>() + base, hidden * 4);
    } else {
      for (int64_t i = 0; i < hidden; ++i) dst[i] = LoadAsFloat(embed.data, embed.dtype, base + i);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Linear(const LinearWeight& w, const Tensor& x, Tensor y) {
  KBITD_RETURN_IF_ERROR(cpu::CheckLinear(w, x, y));
  if (w.is_dense()) return DenseLinear(w, x, y);
  switch (*w.quant_type) {
    case quant::QuantType::kNf4:
    case quant::QuantType::kFp4:
      return FourBitLinear(w, x, y);
    case quant::QuantType::kInt8Rowwise:
      return Int8Linear(w, x, y);
    case quant::QuantType::kGptq:
      return GptqLinear(w, x, y);
    case quant::QuantType::kInt8Blockwise:
      break;
  }
  return absl::UnimplementedError(
      absl::StrCat("linear ", w.name, ": 8-bit blockwise weights have no matmul"));
}

absl::Status CpuBackend::DenseLinear(const LinearWeight& w, const Tensor& x, Tensor y) {
  const int64_t m = x.dim(0), k = w.in_features;
  const ScalarType dtype = w.dense.dtype;
  const float* bias = w.bias.as<const float>();
  pool_.ParallelFor(w.out_features, RowGrain(k, m), [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(dtype == ScalarType::kFloat32 ? 0 : k);
    for (int64_t n = begin; n < end; ++n) {
      const float* row;
      if (dtype == ScalarType::kFloat32) {
        row = w.dense.as<const float>() + n * k;
      } else {
        for (int64_t i = 0; i < k; ++i) scratch[i] = LoadAsFloat(w.dense.data, dtype, n * k + i);
        row = scratch.data();
      }
      const float b = bias != nullptr ? bias[n] : 0.0f;
      for (int64_t t = 0; t < m; ++t) y.row(t)[n] = cpu::Dot(row, x.row(t), k) + b;
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::FourBitLinear(const LinearWeight& w, const Tensor& x, Tensor y) {
  const int64_t m = x.dim(0), k = w.in_features, bs = w.blocksize;
  const float* code = w.code.data();
  const uint8_t* packed_weight = w.packed.as<const uint8_t>();
  const float* absmax = w.absmax.as<const float>();
  const float* bias_values = w.bias.as<const float>();
  const bool nested = w.nested();
  if (k % bs != 0 || bs % 32 != 0) {
    // Blocks straddle rows (bnb takes its dequantize + matmul path here too): per element.
    pool_.ParallelFor(w.out_features, RowGrain(k, m), [&](int64_t begin, int64_t end) {
      std::vector<float> row(k);
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t i = 0; i < k; ++i) {
          int64_t idx = n * k + i;
          uint8_t byte = packed_weight[idx / 2];
          row[i] = code[(idx % 2 == 0) ? (byte >> 4) : (byte & 0xF)] * FourBitScale(w, idx / bs);
        }
        const float bias = bias_values != nullptr ? bias_values[n] : 0.0f;
        for (int64_t t = 0; t < m; ++t) y.row(t)[n] = cpu::Dot(row.data(), x.row(t), k) + bias;
      }
    });
    return absl::OkStatus();
  }
  const int64_t blocks_per_row = k / bs;
  // Few tokens: fused dot products over the packed row (the row stays in cache across tokens).
  // Many tokens: dequantize each row once into scratch, then plain dot products.
  const bool fused = m <= 4;
  std::vector<float> xd;
  if (fused) {
    xd.resize(m * k);
    for (int64_t t = 0; t < m; ++t) cpu::DeinterleaveForDot4bit(x.row(t), k, xd.data() + t * k);
  }
  pool_.ParallelFor(w.out_features, RowGrain(k, m), [&](int64_t begin, int64_t end) {
    std::vector<float> scales(nested ? blocks_per_row : 0);
    std::vector<float> row(fused ? 0 : k);
    for (int64_t n = begin; n < end; ++n) {
      const float* s;
      if (nested) {
        FourBitScales(w, n * blocks_per_row, blocks_per_row, scales.data());
        s = scales.data();
      } else {
        s = absmax + n * blocks_per_row;
      }
      const uint8_t* packed = packed_weight + n * k / 2;
      const float bias = bias_values != nullptr ? bias_values[n] : 0.0f;
      if (fused) {
        for (int64_t t = 0; t < m; ++t) {
          y.row(t)[n] = cpu::Dot4bit(packed, s, code, xd.data() + t * k, k, bs) + bias;
        }
      } else {
        cpu::Dequantize4bitRow(packed, s, code, k, bs, row.data());
        for (int64_t t = 0; t < m; ++t) y.row(t)[n] = cpu::Dot(row.data(), x.row(t), k) + bias;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::GptqLinear(const LinearWeight& w, const Tensor& x, Tensor y) {
  // The GPTQ tensors stay as stored (the checkpoint's bytes are what memory reports count); each
  // chunk of output features is dequantized into float32 scratch, exactly (quant/gptq.h), and then
  // multiplied like DenseLinear's float32 rows: the same operations in the same order, so the
  // result is bit for bit that of the dequantized float32 weight served dense. The g_idx values
  // index the scales, so they are checked here, where they are read.
  const quant::GptqView view = GptqViewOf(w);
  if (absl::Status s = quant::ValidateGptq(view); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("linear ", w.name, ": ", s.message()));
  }
  const int64_t m = x.dim(0), k = w.in_features;
  const float* bias = w.bias.as<const float>();
  // At least 16 output features a chunk: a qweight row's 64-byte cache line holds 16 columns.
  const int64_t grain = std::max<int64_t>(16, RowGrain(k, m));
  pool_.ParallelFor(w.out_features, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> rows((end - begin) * k);
    quant::DequantizeGptqRows(view, begin, end - begin, rows.data());
    for (int64_t n = begin; n < end; ++n) {
      const float* row = rows.data() + (n - begin) * k;
      const float b = bias != nullptr ? bias[n] : 0.0f;
      for (int64_t t = 0; t < m; ++t) y.row(t)[n] = cpu::Dot(row, x.row(t), k) + b;
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Int8Linear(const LinearWeight& w, const Tensor& x, Tensor y) {
  // quant::Int8Linear is bnb's MatMul8bitLt (int8 matmul + dequant + outlier columns). It runs one
  // token at a time: bnb picks outlier columns over all rows of its input, which would make a
  // token's result depend on what else is batched with it; per token it is batch-invariant.
  // Each thread takes a slice of output features.
  const int64_t m = x.dim(0), k = w.in_features;
  const int8_t* cb = w.cb.as<const int8_t>();
  const float* scb = w.scb.as<const float>();
  const float* bias = w.bias.as<const float>();
  absl::Mutex error_mu;
  absl::Status error;  // the first failure of any chunk
  pool_.ParallelFor(w.out_features, RowGrain(k, m), [&](int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    std::vector<float> out(n);
    for (int64_t t = 0; t < m; ++t) {
      absl::Status s =
          quant::Int8Linear(x.row(t), ScalarType::kFloat32, 1, k, cb + begin * k, scb + begin, n,
                            bias ? bias + begin : nullptr, w.threshold, out.data());
      if (!s.ok()) {
        absl::MutexLock lock(&error_mu);
        if (error.ok()) error = s;
        return;
      }
      std::copy_n(out.data(), n, y.row(t) + begin);
    }
  });
  if (!error.ok()) {
    return absl::Status(error.code(), absl::StrCat("linear ", w.name, ": ", error.message()));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor y) {
  KBITD_RETURN_IF_ERROR(CheckMatrix("RmsNorm", "x", x, -1, -1));
  KBITD_RETURN_IF_ERROR(CheckMatrix("RmsNorm", "y", y, x.dim(0), x.dim(1)));
  KBITD_RETURN_IF_ERROR(CheckFloat32("RmsNorm", {&weight}));
  const int64_t n = x.dim(1);
  if (weight.numel() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: weight ", Describe(weight), " for x ", Describe(x)));
  }
  const float* w = weight.f32();
  for (int64_t t = 0; t < x.dim(0); ++t) {
    const float* in = x.row(t);
    float* out = y.row(t);
    float variance = cpu::Dot(in, in, n) / static_cast<float>(n);
    float inv = 1.0f / std::sqrt(variance + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (in[i] * inv);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Rope(Tensor q, Tensor k, int64_t head_dim, const Tensor& positions,
                              const Tensor& inv_freq) {
  KBITD_RETURN_IF_ERROR(CheckMatrix("Rope", "q", q, -1, -1));
  KBITD_RETURN_IF_ERROR(CheckMatrix("Rope", "k", k, q.dim(0), -1));
  KBITD_RETURN_IF_ERROR(CheckFloat32("Rope", {&inv_freq}));
  KBITD_RETURN_IF_ERROR(CheckInt32("Rope", positions, q.dim(0)));
  if (head_dim <= 0 || head_dim % 2 != 0 || q.dim(1) % head_dim != 0 || k.dim(1) % head_dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: q ", Describe(q), " / k ", Describe(k),
                                                   " are not heads of ", head_dim));
  }
  const int64_t half = head_dim / 2;
  if (inv_freq.numel() != half) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: inv_freq has ", inv_freq.numel(), " entries, head_dim / 2 is ", half));
  }
  const int32_t* pos = positions.as<const int32_t>();
  const float* freq = inv_freq.f32();
  std::vector<float> cos_v(half), sin_v(half);
  for (int64_t t = 0; t < q.dim(0); ++t) {
    // transformers: freqs = inv_freq (f32) * position (f32), then cos/sin of the f32 angle.
    for (int64_t i = 0; i < half; ++i) {
      float angle = freq[i] * static_cast<float>(pos[t]);
      cos_v[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_v[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (Tensor* tensor : {&q, &k}) {
      float* row = tensor->row(t);
      for (int64_t h = 0; h < tensor->dim(1) / head_dim; ++h) {
        float* v = row + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          float a = v[i], b = v[i + half];
          v[i] = a * cos_v[i] - b * sin_v[i];
          v[i + half] = b * cos_v[i] + a * sin_v[i];
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// The [num_kv_heads, head_dim] slot of `position` in a layer's K or V, through the sequence's
// block table row.
float* KvSlot(const Tensor& layer_kv, const int32_t* table, int64_t position) {
  const int64_t block_size = layer_kv.dim(1);
  const int64_t block = table[position / block_size];
  return layer_kv.f32() + block * layer_kv.strides[0] +
         (position % block_size) * layer_kv.strides[1];
}

}  // namespace

absl::Status CpuBackend::WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                                 const StepInputs& step) {
  KBITD_RETURN_IF_ERROR(CheckKvCache("WriteKv", cache, layer));
  const Tensor keys = cache.keys(layer), values = cache.values(layer);
  const int64_t width = keys.dim(2) * keys.dim(3);  // kv heads x head_dim
  KBITD_RETURN_IF_ERROR(CheckMatrix("WriteKv", "k", k, -1, width));
  KBITD_RETURN_IF_ERROR(CheckMatrix("WriteKv", "v", v, k.dim(0), width));
  KBITD_RETURN_IF_ERROR(CheckStep("WriteKv", step, k.dim(0)));
  KBITD_RETURN_IF_ERROR(CheckSlots("WriteKv", cache, step, k.dim(0), /*history=*/false));
  const int64_t bytes = keys.strides[1] * static_cast<int64_t>(sizeof(float));
  const int32_t* positions = step.positions.as<const int32_t>();
  const int32_t* sequence = step.token_sequence.as<const int32_t>();
  const int32_t* tables = step.block_tables.as<const int32_t>();
  const int64_t row_stride = step.block_tables.strides[0];
  for (int64_t t = 0; t < k.dim(0); ++t) {
    const int32_t* table = tables + sequence[t] * row_stride;
    std::memcpy(KvSlot(keys, table, positions[t]), k.row(t), bytes);
    std::memcpy(KvSlot(values, table, positions[t]), v.row(t), bytes);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                                   const StepInputs& step, const AttentionShape& shape,
                                   Tensor out) {
  KBITD_RETURN_IF_ERROR(CheckKvCache("Attention", cache, layer));
  const int64_t num_heads = shape.num_heads, head_dim = shape.head_dim;
  KBITD_RETURN_IF_ERROR(CheckMatrix("Attention", "q", q, -1, num_heads * head_dim));
  KBITD_RETURN_IF_ERROR(CheckMatrix("Attention", "out", out, q.dim(0), num_heads * head_dim));
  const Tensor cache_keys = cache.keys(layer);
  if (shape.num_kv_heads <= 0 || num_heads % shape.num_kv_heads != 0 ||
      shape.num_kv_heads != cache_keys.dim(2) || head_dim != cache_keys.dim(3)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: ", num_heads, " heads of ", head_dim, " over ", shape.num_kv_heads,
                     " kv heads do not match the cache's ", cache_keys.dim(2), " kv heads of ",
                     cache_keys.dim(3)));
  }
  KBITD_RETURN_IF_ERROR(CheckStep("Attention", step, q.dim(0)));
  KBITD_RETURN_IF_ERROR(CheckSlots("Attention", cache, step, q.dim(0), /*history=*/true));
  const int64_t tokens = q.dim(0);
  const int64_t group = num_heads / shape.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const Tensor keys = cache.keys(layer), values = cache.values(layer);
  const int32_t* positions = step.positions.as<const int32_t>();
  const int32_t* sequence = step.token_sequence.as<const int32_t>();
  const int32_t* tables = step.block_tables.as<const int32_t>();
  const int64_t row_stride = step.block_tables.strides[0];
  pool_.ParallelFor(tokens * num_heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / num_heads, h = item % num_heads, kvh = h / group;
      const int64_t length = positions[t] + 1;
      const int32_t* table = tables + sequence[t] * row_stride;
      const float* qh = q.row(t) + h * head_dim;
      scores.resize(length);
      float max_score = -INFINITY;
      for (int64_t p = 0; p < length; ++p) {
        scores[p] = cpu::Dot(qh, KvSlot(keys, table, p) + kvh * head_dim, head_dim) * scale;
        max_score = std::max(max_score, scores[p]);
      }
      float sum = 0;
      for (int64_t p = 0; p < length; ++p) {
        scores[p] = std::exp(scores[p] - max_score);
        sum += scores[p];
      }
      float* o = out.row(t) + h * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      const float inv_sum = 1.0f / sum;
      for (int64_t p = 0; p < length; ++p) {
        cpu::Axpy(scores[p] * inv_sum, KvSlot(values, table, p) + kvh * head_dim, o, head_dim);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor out) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("SiluMul", {&gate, &up, &out}));
  KBITD_RETURN_IF_ERROR(CheckSameSize("SiluMul", gate, up));
  KBITD_RETURN_IF_ERROR(CheckSameSize("SiluMul", gate, out));
  const int64_t n = gate.numel();
  const float* g = gate.f32();
  const float* u = up.f32();
  float* o = out.f32();
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::Add(Tensor x, const Tensor& y) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("Add", {&x, &y}));
  KBITD_RETURN_IF_ERROR(CheckSameSize("Add", x, y));
  const int64_t n = x.numel();
  float* a = x.f32();
  const float* b = y.f32();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::RoundTo(Tensor x, ScalarType dtype) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("RoundTo", {&x}));
  if (dtype == ScalarType::kFloat32) return absl::OkStatus();
  if (dtype != ScalarType::kBFloat16 && dtype != ScalarType::kFloat16) {
    return absl::InvalidArgumentError(absl::StrCat("RoundTo: ", std::string(TorchDtypeName(dtype)),
                                                   " is not a 16-bit float dtype"));
  }
  float* a = x.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    a[i] = dtype == ScalarType::kBFloat16 ? BFloat16ToFloat(FloatToBFloat16(a[i]))
                                          : HalfToFloat(FloatToHalf(a[i]));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::GatherRows(const Tensor& x, const Tensor& rows, Tensor out) {
  KBITD_RETURN_IF_ERROR(CheckMatrix("GatherRows", "x", x, -1, -1));
  KBITD_RETURN_IF_ERROR(CheckMatrix("GatherRows", "out", out, -1, x.dim(1)));
  KBITD_RETURN_IF_ERROR(CheckInt32("GatherRows", rows, out.dim(0)));
  const int32_t* r = rows.as<const int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    if (r[i] < 0 || r[i] >= x.dim(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("GatherRows: row ", r[i], " outside [0, ", x.dim(0), ")"));
    }
    std::memcpy(out.row(i), x.row(r[i]), x.dim(1) * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::GreedySample(const Tensor& logits, Tensor tokens, Tensor logprobs) {
  KBITD_RETURN_IF_ERROR(CheckMatrix("GreedySample", "logits", logits, -1, -1));
  KBITD_RETURN_IF_ERROR(CheckInt32("GreedySample", tokens, logits.dim(0)));
  if (!logprobs.device.is_cpu() || logprobs.dtype != ScalarType::kFloat32 ||
      logprobs.numel() != logits.dim(0) || (logprobs.numel() > 0 && !logprobs.defined())) {
    return absl::InvalidArgumentError(
        absl::StrCat("GreedySample: logprobs must be float32 [", logits.dim(0), "] on the host"));
  }
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    const GreedyChoice choice = PickGreedy(logits.row(r), logits.dim(1));
    tokens.as<int32_t>()[r] = choice.token;
    logprobs.as<float>()[r] = choice.logprob;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Quantize4bit(quant::FourBitType type, const Tensor& dense,
                                      int64_t blocksize, Tensor packed, Tensor absmax) {
  KBITD_RETURN_IF_ERROR(CheckQuantize4bitArgs(device_, dense, blocksize, packed, absmax));
  return quant::Quantize4bit(type, dense.data, dense.dtype, dense.numel(), blocksize,
                             packed.as<uint8_t>(), absmax.as<float>());
}

absl::Status CpuBackend::DoubleQuantize(const Tensor& absmax, Tensor codes, Tensor nested_absmax,
                                        Tensor offset) {
  KBITD_RETURN_IF_ERROR(CheckDoubleQuantizeArgs(device_, absmax, codes, nested_absmax, offset));
  KBITD_ASSIGN_OR_RETURN(quant::NestedAbsmax nested,
                         quant::DoubleQuantizeAbsmax(absmax.as<const float>(), absmax.numel()));
  std::copy(nested.codes.begin(), nested.codes.end(), codes.as<uint8_t>());
  std::copy(nested.nested_absmax.begin(), nested.nested_absmax.end(), nested_absmax.as<float>());
  *offset.as<float>() = nested.offset;
  return absl::OkStatus();
}

absl::Status CpuBackend::QuantizeRowwiseInt8(const Tensor& dense, Tensor cb, Tensor scb) {
  KBITD_RETURN_IF_ERROR(CheckRowwiseInt8Args(device_, dense, cb, scb));
  return quant::QuantizeRowwiseInt8(dense.data, dense.dtype, dense.dim(0), dense.dim(1),
                                    cb.as<int8_t>(), scb.as<float>());
}

absl::Status CpuBackend::CopyTo(const Tensor& src, Tensor dst) {
  if (!src.device.is_cpu() || !dst.device.is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CopyTo: the CPU backend copies host memory, not ", src.device.ToString(),
                     " -> ", dst.device.ToString()));
  }
  if (src.dtype != dst.dtype || src.numel() != dst.numel() ||
      (src.numel() > 0 && (!src.defined() || !dst.defined()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("CopyTo: ", src.numel(), " x ", std::string(TorchDtypeName(src.dtype)),
                     " into ", dst.numel(), " x ", std::string(TorchDtypeName(dst.dtype))));
  }
  if (src.bytes() > 0) std::memcpy(dst.data, src.data, static_cast<size_t>(src.bytes()));
  return absl::OkStatus();
}

std::unique_ptr<Backend> NewCpuBackend(int num_threads) {
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace kbitd::runtime
