// Plain float64 references of the Backend ops, written from the contract (runtime/backend.h) and
// the formats' definitions (docs/bnb-spec.md), independently of any backend's code, and the
// comparison the backend suites use. Inputs are the values as stored on the device (already
// rounded to their dtype).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "tests/runtime/backend_test_param.h"

namespace kbitd::test {

// Deterministic normal values (a fixed seed per call site, so a failure reproduces).
inline std::vector<float> NormalFloats(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(n);
  for (float& v : values) v = normal(rng);
  return values;
}

// A reference result and, per element, the size of what it is made of (Tolerance's scale).
struct Reference {
  std::vector<double> want;
  std::vector<double> scale;
  std::vector<double> slack;  // extra allowance the format itself grants (empty: none)
};

// One ulp relative to the magnitude of a value stored in `dtype`: any backend that stores its
// result in that dtype rounds it by up to half of this.
inline double StorageUlp(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kBFloat16:
      return std::ldexp(1.0, -8);
    case ScalarType::kFloat16:
      return std::ldexp(1.0, -10);
    default:
      return std::ldexp(1.0, -23);
  }
}

// Expects every got[i] within tol (plus the rounding of `out_dtype` and ref.slack) of ref.want[i];
// reports the first mismatches with their indices.
inline void ExpectClose(const std::vector<float>& got, const Reference& ref, const Tolerance& tol,
                        ScalarType out_dtype) {
  ASSERT_EQ(got.size(), ref.want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double want = ref.want[i];
    double allowed = tol.abs + tol.rel * ref.scale[i] + StorageUlp(out_dtype) * std::abs(want);
    if (!ref.slack.empty()) allowed += ref.slack[i];
    const double err = std::abs(static_cast<double>(got[i]) - want);
    if (!(err <= allowed) && ++bad <= 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want << " (error "
                    << err << " > " << allowed << ")";
    }
  }
  EXPECT_EQ(bad, 0) << "of " << got.size() << " elements";
}

// y[m, n] = x[m, k] w[n, k]^T + bias[n] (bias empty: none).
inline Reference LinearReference(const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>& bias, int64_t m, int64_t n, int64_t k) {
  Reference ref;
  ref.want.resize(m * n);
  ref.scale.resize(m * n);
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t o = 0; o < n; ++o) {
      double sum = bias.empty() ? 0.0 : bias[o];
      double size = std::abs(sum);
      for (int64_t i = 0; i < k; ++i) {
        const double term = static_cast<double>(x[t * k + i]) * w[o * k + i];
        sum += term;
        size += std::abs(term);
      }
      ref.want[t * n + o] = sum;
      ref.scale[t * n + o] = size;
    }
  }
  return ref;
}

// LLM.int8 (bnb MatMul8bitLt, bnb-spec §6): per token, x is rounded to fp16; columns with
// |x16| >= threshold (threshold > 0) are outliers, multiplied in x's precision with the dequantized
// weight cb * scb / 127 (rounded to x's dtype); the rest is quantized row-wise to int8 with the
// absmax of the non-outliers and multiplied exactly. Outliers are picked per token, as the CPU
// backend does, so that a token's result does not depend on what it is batched with. The slack
// covers the fp16 rounding bnb applies to the int8 product (twice with a bias) and one code of
// difference where x16 * 127 / absmax is a rounding tie.
inline Reference Int8LinearReference(const std::vector<float>& x, const std::vector<int8_t>& cb,
                                     const std::vector<float>& scb, const std::vector<float>& bias,
                                     float threshold, ScalarType x_dtype, int64_t m, int64_t n,
                                     int64_t k) {
  Reference ref;
  ref.want.resize(m * n);
  ref.scale.resize(m * n);
  ref.slack.resize(m * n);
  std::vector<float> x16(k);
  for (int64_t t = 0; t < m; ++t) {
    double absmax = 0;
    for (int64_t i = 0; i < k; ++i) {
      x16[i] = HalfToFloat(FloatToHalf(x[t * k + i]));
      if (threshold > 0 && std::abs(x16[i]) >= threshold) continue;
      absmax = std::max(absmax, static_cast<double>(std::abs(x16[i])));
    }
    for (int64_t o = 0; o < n; ++o) {
      double sum = 0, size = 0, max_w = 0;
      for (int64_t i = 0; i < k; ++i) {
        const double w = cb[o * k + i] * static_cast<double>(scb[o]) / 127.0;
        size += std::abs(x[t * k + i] * w);
        max_w = std::max(max_w, std::abs(w));
        if (threshold > 0 && std::abs(x16[i]) >= threshold) {
          uint32_t bits = 0;
          StoreFromFloat(&bits, x_dtype, 0, static_cast<float>(w));
          sum += static_cast<double>(x[t * k + i]) * LoadAsFloat(&bits, x_dtype, 0);
        } else if (absmax > 0) {
          const double code = std::nearbyint(x16[i] * 127.0 / absmax);
          sum += code * absmax / 127.0 * w;
        }
      }
      const double b = bias.empty() ? 0.0 : bias[o];
      ref.want[t * n + o] = sum + b;
      ref.scale[t * n + o] = size + std::abs(b);
      ref.slack[t * n + o] = 2 * StorageUlp(ScalarType::kFloat16) * (std::abs(sum) + std::abs(b)) +
                             absmax / 127 * max_w;
    }
  }
  return ref;
}

// transformers LlamaRMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.
inline Reference RmsNormReference(const std::vector<float>& x, const std::vector<float>& weight,
                                  float eps, int64_t rows, int64_t n) {
  Reference ref;
  for (int64_t t = 0; t < rows; ++t) {
    double sum_sq = 0;
    for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(x[t * n + i]) * x[t * n + i];
    const double inv = 1.0 / std::sqrt(sum_sq / n + eps);
    for (int64_t i = 0; i < n; ++i) {
      ref.want.push_back(x[t * n + i] * inv * weight[i]);
      ref.scale.push_back(std::abs(ref.want.back()));
    }
  }
  return ref;
}

// rotate_half RoPE of one [rows, heads * head_dim] tensor. The angle is the float32 product
// inv_freq * position, as transformers computes it; cos and sin of it are exact here.
inline Reference RopeReference(const std::vector<float>& x, const std::vector<int32_t>& positions,
                               const std::vector<float>& inv_freq, int64_t rows, int64_t width,
                               int64_t head_dim) {
  Reference ref;
  ref.want.resize(rows * width);
  ref.scale.resize(rows * width);
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t h = 0; h < width / head_dim; ++h) {
      const int64_t base = t * width + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = inv_freq[i] * static_cast<float>(positions[t]);
        const double c = std::cos(static_cast<double>(angle));
        const double s = std::sin(static_cast<double>(angle));
        const double a = x[base + i], b = x[base + i + half];
        ref.want[base + i] = a * c - b * s;
        ref.want[base + i + half] = b * c + a * s;
        ref.scale[base + i] = std::abs(a * c) + std::abs(b * s);
        ref.scale[base + i + half] = std::abs(b * c) + std::abs(a * s);
      }
    }
  }
  return ref;
}

// One token of a paged-attention batch: its query row, and the keys / values of positions
// [0, position] of its sequence, [num_kv_heads * head_dim] each.
struct AttentionToken {
  std::vector<float> q;
  std::vector<std::vector<float>> keys, values;
};

// Causal softmax(q k^T / sqrt(head_dim)) v per head; query head h reads kv head h / group (GQA).
inline Reference AttentionReference(const std::vector<AttentionToken>& tokens, int64_t num_heads,
                                    int64_t num_kv_heads, int64_t head_dim) {
  Reference ref;
  const int64_t group = num_heads / num_kv_heads;
  for (const AttentionToken& token : tokens) {
    for (int64_t h = 0; h < num_heads; ++h) {
      const int64_t kv = (h / group) * head_dim;
      std::vector<double> p(token.keys.size());
      double max_score = -INFINITY;
      for (size_t j = 0; j < p.size(); ++j) {
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) {
          dot += static_cast<double>(token.q[h * head_dim + d]) * token.keys[j][kv + d];
        }
        p[j] = dot / std::sqrt(static_cast<double>(head_dim));
        max_score = std::max(max_score, p[j]);
      }
      double sum = 0;
      for (double& s : p) sum += (s = std::exp(s - max_score));
      for (int64_t d = 0; d < head_dim; ++d) {
        double out = 0, size = 0;
        for (size_t j = 0; j < p.size(); ++j) {
          out += p[j] / sum * token.values[j][kv + d];
          size += p[j] / sum * std::abs(token.values[j][kv + d]);
        }
        ref.want.push_back(out);
        ref.scale.push_back(size);
      }
    }
  }
  return ref;
}

}  // namespace kbitd::test
