#include "runtime/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/int8_rowwise.h"
#include "runtime/cpu/cpu_kernels.h"

namespace kbitd::runtime {
namespace {

// Rows per parallel chunk: enough work per task to amortise the fork-join.
int64_t RowGrain(int64_t k, int64_t m) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * std::min<int64_t>(m, 8)));
}

// The CPU backend computes in float32 on host memory; anything else is a caller's bug or a tensor
// meant for another device.
absl::Status CheckFloat32(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t->dtype != ScalarType::kFloat32 || !t->device.is_cpu() || !t->defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": the CPU backend takes float32 host tensors, got ",
                       t->defined() ? std::string(TorchDtypeName(t->dtype)) : "no data", " on ",
                       t->device.ToString()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckInt32(const char* op, const Tensor& t, int64_t count) {
  if (t.dtype != ScalarType::kInt32 || !t.device.is_cpu() || t.numel() != count ||
      (count > 0 && !t.defined())) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": expected ", count, " int32 host values, got ", t.numel(), " ",
                     std::string(TorchDtypeName(t.dtype)), " on ", t.device.ToString()));
  }
  return absl::OkStatus();
}

absl::Status CheckSameSize(const char* op, const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", a.numel(), " and ", b.numel(), " elements"));
  }
  return absl::OkStatus();
}

absl::Status CheckLinearShapes(const LinearWeight& w, const Tensor& x, const Tensor& y) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("Linear", {&x, &y}));
  if (!w.device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear ", w.name, ": weights on ", w.device().ToString(), ", not the host"));
  }
  if (x.rank != 2 || y.rank != 2 || x.dim(1) != w.in_features || y.dim(1) != w.out_features ||
      x.dim(0) != y.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "linear ", w.name, ": x [", x.dim(0), ", ", x.dim(1), "] / y [", y.dim(0), ", ", y.dim(1),
        "] do not match weight [", w.out_features, ", ", w.in_features, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

CpuBackend::CpuBackend(int num_threads) : device_(Device::Cpu()), pool_(num_threads) {}

absl::Status CpuBackend::Embedding(const Tensor& embed, const Tensor& tokens, Tensor out) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("Embedding", {&out}));
  KBITD_RETURN_IF_ERROR(CheckInt32("Embedding", tokens, out.dim(0)));
  if (embed.rank != 2 || embed.dim(1) != out.dim(1) || !embed.device.is_cpu()) {
    return absl::InvalidArgumentError("Embedding: table and output widths differ");
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
  if (auto s = CheckLinearShapes(w, x, y); !s.ok()) return s;
  if (w.is_dense()) return DenseLinear(w, x, y);
  switch (*w.quant_type) {
    case quant::QuantType::kNf4:
    case quant::QuantType::kFp4:
      return FourBitLinear(w, x, y);
    case quant::QuantType::kInt8Rowwise:
      return Int8Linear(w, x, y);
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
  KBITD_RETURN_IF_ERROR(CheckFloat32("RmsNorm", {&x, &weight, &y}));
  const int64_t n = x.dim(1);
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
  KBITD_RETURN_IF_ERROR(CheckFloat32("Rope", {&q, &k, &inv_freq}));
  KBITD_RETURN_IF_ERROR(CheckInt32("Rope", positions, q.dim(0)));
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

absl::Status CheckStep(const char* op, const StepInputs& step, int64_t tokens) {
  KBITD_RETURN_IF_ERROR(CheckInt32(op, step.positions, tokens));
  KBITD_RETURN_IF_ERROR(CheckInt32(op, step.token_sequence, tokens));
  if (step.block_tables.rank != 2 || step.block_tables.dtype != ScalarType::kInt32) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": block_tables must be int32 [S, blocks]"));
  }
  return absl::OkStatus();
}

absl::Status CheckKvCache(const char* op, const KvCache& cache, int64_t layer) {
  if (cache.dtype() != ScalarType::kFloat32 || !cache.device().is_cpu()) {
    return absl::UnimplementedError(absl::StrCat(
        op, ": the CPU backend reads a float32 KV cache on the host, not ",
        std::string(TorchDtypeName(cache.dtype())), " on ", cache.device().ToString()));
  }
  if (layer < 0 || layer >= cache.num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": layer ", layer, " outside the cache's ", cache.num_layers()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CpuBackend::WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                                 const StepInputs& step) {
  KBITD_RETURN_IF_ERROR(CheckFloat32("WriteKv", {&k, &v}));
  KBITD_RETURN_IF_ERROR(CheckStep("WriteKv", step, k.dim(0)));
  KBITD_RETURN_IF_ERROR(CheckKvCache("WriteKv", cache, layer));
  const Tensor keys = cache.keys(layer), values = cache.values(layer);
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
  KBITD_RETURN_IF_ERROR(CheckFloat32("Attention", {&q, &out}));
  KBITD_RETURN_IF_ERROR(CheckStep("Attention", step, q.dim(0)));
  KBITD_RETURN_IF_ERROR(CheckKvCache("Attention", cache, layer));
  const int64_t num_heads = shape.num_heads, head_dim = shape.head_dim;
  if (shape.num_kv_heads <= 0 || num_heads % shape.num_kv_heads != 0 ||
      q.dim(1) != num_heads * head_dim || out.dim(1) != num_heads * head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: ", num_heads, " heads of ", head_dim, " over ", shape.num_kv_heads,
                     " kv heads do not match q [", q.dim(0), ", ", q.dim(1), "] / out [",
                     out.dim(0), ", ", out.dim(1), "]"));
  }
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
  KBITD_RETURN_IF_ERROR(CheckFloat32("GatherRows", {&x, &out}));
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

absl::Status CpuBackend::CopyTo(const Tensor& src, Tensor dst) {
  if (!src.device.is_cpu() || !dst.device.is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CopyTo: the CPU backend copies host memory, not ", src.device.ToString(),
                     " -> ", dst.device.ToString()));
  }
  if (src.dtype != dst.dtype || src.numel() != dst.numel()) {
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
