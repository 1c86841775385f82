#include "runtime/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/int8_rowwise.h"
#include "runtime/cpu/cpu_kernels.h"

namespace kbitd::runtime {
namespace {

// Rows per parallel chunk: enough work per task to amortise the fork-join.
int64_t RowGrain(int64_t k, int64_t m) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * std::min<int64_t>(m, 8)));
}

absl::Status CheckLinearShapes(const LinearWeight& w, const Tensor& x, const Tensor& y) {
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

void CpuBackend::Embedding(const ModelWeights& weights, const int32_t* tokens, Tensor out) {
  const int64_t hidden = out.dim(1);
  const Tensor& embed = weights.embed_tokens;
  for (int64_t t = 0; t < out.dim(0); ++t) {
    const int64_t base = static_cast<int64_t>(tokens[t]) * hidden;
    float* dst = out.row(t);
    if (embed.dtype == ScalarType::kFloat32) {
      std::memcpy(dst, embed.as<const float>() + base, hidden * 4);
    } else {
      for (int64_t i = 0; i < hidden; ++i) dst[i] = LoadAsFloat(embed.data, embed.dtype, base + i);
    }
  }
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

void CpuBackend::RmsNorm(const Tensor& x, const float* weight, float eps, Tensor y) {
  const int64_t n = x.dim(1);
  for (int64_t t = 0; t < x.dim(0); ++t) {
    const float* in = x.row(t);
    float* out = y.row(t);
    float variance = cpu::Dot(in, in, n) / static_cast<float>(n);
    float inv = 1.0f / std::sqrt(variance + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (in[i] * inv);
  }
}

void CpuBackend::Rope(Tensor q, Tensor k, int64_t head_dim, const int32_t* positions,
                      const std::vector<float>& inv_freq) {
  const int64_t half = head_dim / 2;
  std::vector<float> cos_v(half), sin_v(half);
  for (int64_t t = 0; t < q.dim(0); ++t) {
    // transformers: freqs = inv_freq (f32) * position (f32), then cos/sin of the f32 angle.
    for (int64_t i = 0; i < half; ++i) {
      float angle = inv_freq[i] * static_cast<float>(positions[t]);
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
}

void CpuBackend::WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                         const AttentionBatch& batch) {
  const int64_t floats = cache.slot_floats();
  for (int64_t t = 0; t < k.dim(0); ++t) {
    std::memcpy(cache.KeySlot(layer, *batch.tables[t], batch.positions[t]), k.row(t), floats * 4);
    std::memcpy(cache.ValueSlot(layer, *batch.tables[t], batch.positions[t]), v.row(t), floats * 4);
  }
}

void CpuBackend::Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                           const AttentionBatch& batch, int64_t num_heads, int64_t num_kv_heads,
                           int64_t head_dim, Tensor out) {
  const int64_t tokens = q.dim(0);
  const int64_t group = num_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  pool_.ParallelFor(tokens * num_heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / num_heads, h = item % num_heads, kvh = h / group;
      const int64_t length = batch.positions[t] + 1;
      const std::vector<int32_t>& table = *batch.tables[t];
      const float* qh = q.row(t) + h * head_dim;
      scores.resize(length);
      float max_score = -INFINITY;
      for (int64_t p = 0; p < length; ++p) {
        scores[p] = cpu::Dot(qh, cache.KeySlot(layer, table, p) + kvh * head_dim, head_dim) * scale;
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
        cpu::Axpy(scores[p] * inv_sum, cache.ValueSlot(layer, table, p) + kvh * head_dim, o,
                  head_dim);
      }
    }
  });
}

void CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor out) {
  const int64_t n = gate.numel();
  const float* g = gate.f32();
  const float* u = up.f32();
  float* o = out.f32();
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void CpuBackend::Add(Tensor x, const Tensor& y) {
  const int64_t n = x.numel();
  float* a = x.f32();
  const float* b = y.f32();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

void CpuBackend::RoundTo(Tensor x, ScalarType dtype) {
  if (dtype == ScalarType::kFloat32) return;
  float* a = x.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    a[i] = dtype == ScalarType::kBFloat16 ? BFloat16ToFloat(FloatToBFloat16(a[i]))
                                          : HalfToFloat(FloatToHalf(a[i]));
  }
}

void CpuBackend::GatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor out) {
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.row(static_cast<int64_t>(i)), x.row(rows[i]), x.dim(1) * sizeof(float));
  }
}

void CpuBackend::CopyToHost(const Tensor& x, float* host) {
  std::memcpy(host, x.f32(), x.numel() * sizeof(float));
}

}  // namespace kbitd::runtime
