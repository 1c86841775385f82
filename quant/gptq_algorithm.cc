// The GPTQ algorithm (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", Algorithm 1): quantize one input column at a time and
// spread its error over the columns not yet quantized through the upper Cholesky factor of H^-1,
// updating the rest of the matrix once per block of columns (lazy batch updates). Written from the
// paper; AutoGPTQ / GPTQModel `fasterquant` were read for the conventions that make the output
// match theirs: dead columns, damping, act order (desc_act) and groups found on the updated
// weights when a group starts.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/gptq_quantize.h"
#include "quant/gptq_quantize_internal.h"

namespace kbitd::quant {
namespace {

// In-place lower Cholesky factor of the n x n symmetric matrix a (upper triangle zeroed).
absl::Status Cholesky(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the Hessian is not positive definite at column ", j, " (raise the damping)"));
    }
    const double l = std::sqrt(d);
    a[j * n + j] = l;
    for (int64_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int64_t k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / l;
    }
    for (int64_t i = 0; i < j; ++i) a[i * n + j] = 0;
  }
  return absl::OkStatus();
}

// U upper triangular with U^T U = H^-1, from H (the form the column updates need: row i of U
// scaled by 1 / U[i][i] is the error feedback of column i onto the later columns).
absl::StatusOr<std::vector<double>> UpperCholeskyOfInverse(std::vector<double> h, int64_t n) {
  KBITD_RETURN_IF_ERROR(Cholesky(h, n));  // h = L, H = L L^T
  // L^-1 by forward substitution, then H^-1 = L^-T L^-1.
  std::vector<double> inv(n * n, 0.0);
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t i = c; i < n; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (int64_t k = c; k < i; ++k) s -= h[i * n + k] * inv[k * n + c];
      inv[i * n + c] = s / h[i * n + i];
    }
  }
  std::vector<double> hinv(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      double s = 0;
      for (int64_t k = i; k < n; ++k) s += inv[k * n + i] * inv[k * n + j];
      hinv[i * n + j] = hinv[j * n + i] = s;
    }
  }
  KBITD_RETURN_IF_ERROR(Cholesky(hinv, n));  // H^-1 = L' L'^T; U = L'^T
  std::vector<double> upper(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) upper[j * n + i] = hinv[i * n + j];
  return upper;
}

}  // namespace

absl::StatusOr<GptqQuantized> QuantizeGptq(const float* weight, int64_t out_features,
                                           int64_t in_features, std::vector<double> hessian,
                                           const GptqQuantizeOptions& options) {
  KBITD_RETURN_IF_ERROR(ValidateGptqQuantize(out_features, in_features, options));
  const int64_t n = in_features, rows = out_features;
  if (static_cast<int64_t>(hessian.size()) != n * n) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hessian has ", hessian.size(), " elements, not ", n, " x ", n));
  }
  // Column order: identity, or by descending diag(H) (act order: the columns whose inputs carry
  // most energy are quantized first, while the most columns remain to absorb their error).
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  if (options.act_order) {
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return hessian[a * n + a] > hessian[b * n + b]; });
  }
  // W in the quantization order, as float (find_params reads floats) and double for updates.
  std::vector<float> w(rows * n);
  std::vector<double> h(n * n);
  for (int64_t j = 0; j < n; ++j) {
    const bool dead = hessian[perm[j] * n + perm[j]] == 0;  // never-active input: weight unused
    for (int64_t r = 0; r < rows; ++r) w[r * n + j] = dead ? 0.0f : weight[r * n + perm[j]];
    for (int64_t i = 0; i < n; ++i) h[j * n + i] = hessian[perm[j] * n + perm[i]];
    if (dead) h[j * n + j] = 1;
  }
  double mean_diag = 0;
  for (int64_t j = 0; j < n; ++j) mean_diag += h[j * n + j];
  mean_diag /= static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j) h[j * n + j] += options.damp_percent * mean_diag;
  KBITD_ASSIGN_OR_RETURN(std::vector<double> u, UpperCholeskyOfInverse(std::move(h), n));

  GptqQuantized q = internal::EmptyQuantized(out_features, in_features, options);
  const int64_t group = options.group_size > 0 ? options.group_size : n;
  std::vector<internal::GroupParams> params(rows);
  std::vector<double> err(rows * options.block_size);
  for (int64_t b0 = 0; b0 < n; b0 += options.block_size) {
    const int64_t b1 = std::min(n, b0 + options.block_size);
    for (int64_t j = b0; j < b1; ++j) {
      if (j % group == 0) {  // a group starts: its scales from the weights as updated so far
        for (int64_t r = 0; r < rows; ++r) {
          KBITD_ASSIGN_OR_RETURN(params[r], internal::FindGroupParams(&w[r * n + j], group, 1,
                                                                      options.bits, options.sym));
          q.scales[(j / group) * rows + r] = params[r].scale_half;
          q.zeros[(j / group) * rows + r] = params[r].zero;
        }
      }
      const double d = u[j * n + j];
      for (int64_t r = 0; r < rows; ++r) {
        const double value = w[r * n + j];
        const int code = params[r].Code(value);
        q.codes[perm[j] * rows + r] = static_cast<uint8_t>(code);
        const double e = (value - params[r].Dequant(code)) / d;
        err[r * options.block_size + (j - b0)] = e;
        // Error feedback within the block (the rest of the matrix waits for the block's end).
        for (int64_t i = j + 1; i < b1; ++i) w[r * n + i] -= static_cast<float>(e * u[j * n + i]);
      }
    }
    // Lazy batch update: the block's errors onto every later column at once.
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = b1; i < n; ++i) {
        double s = 0;
        for (int64_t j = b0; j < b1; ++j)
          s += err[r * options.block_size + (j - b0)] * u[j * n + i];
        w[r * n + i] -= static_cast<float>(s);
      }
    }
  }
  // g_idx: the group of each original row is that of its position in the quantization order.
  for (int64_t j = 0; j < n; ++j) q.g_idx[perm[j]] = static_cast<int32_t>(j / group);
  return q;
}

}  // namespace kbitd::quant
