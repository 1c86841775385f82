#include "quant/int8_rowwise.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_internal.h"
#include "quant/encode.h"
#include "quant/half_convert.h"

namespace kbitd::quant {
namespace {

absl::Status CheckMatrix(int64_t rows, int64_t cols, ScalarType type, const char* what) {
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape [", rows, ", ", cols, "] must not be negative"));
  }
  return internal::CheckFloatType(type, what);
}

// bnb converts every LLM.int8() operand to fp16 first (A.to(torch.float16)).
template <ScalarType kType>
float LoadAsHalfT(const void* data, int64_t i) {
  const float v = internal::FloatElem<kType>::Load(data, i);
  if constexpr (kType == ScalarType::kFloat16) return v;
  return internal::HalfToFloatInline(internal::FloatToHalfInline(v));
}

float LoadAsHalf(const void* data, ScalarType type, int64_t i) {
  return internal::DispatchFloat(type,
                                 [&](auto t) { return LoadAsHalfT<decltype(t)::value>(data, i); });
}

template <ScalarType kType>
void QuantizeRowwiseImpl(const void* weight, int64_t rows, int64_t cols, int8_t* cb, float* scb) {
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      row[c] = LoadAsHalfT<kType>(weight, r * cols + c);
      const float a = fabsf(row[c]);
      amax = a > amax ? a : amax;  // NaN ignored, as fmaxf
    }
    scb[r] = amax;
    const float scale = Int8Scale(amax);
    for (int64_t c = 0; c < cols; ++c) cb[r * cols + c] = RoundToInt8(row[c] * scale);
  }
}

// Rows of 512+ values convert the 256 possible outputs once per row.
template <ScalarType kOut>
void DequantizeRowwiseImpl(const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                           void* output) {
  using Out = internal::FloatElem<kOut>;
  using Bits = typename Out::Bits;
  Bits* out = static_cast<Bits*>(output);
  Bits table[256];
  auto value = [&](int64_t r, int code) {
    return Out::Convert((static_cast<float>(code) * scb[r]) * kInt8DequantScale);
  };
  for (int64_t r = 0; r < rows; ++r) {
    if (cols >= 512) {
      for (int c = -128; c < 128; ++c) table[c + 128] = value(r, c);
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = table[cb[r * cols + c] + 128];
    } else {
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = value(r, cb[r * cols + c]);
    }
  }
}

}  // namespace

absl::Status QuantizeRowwiseInt8(const void* weight, ScalarType type, int64_t rows, int64_t cols,
                                 int8_t* cb, float* scb) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(rows, cols, type, "int8 weight"));
  const int64_t n = rows * cols;
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(weight, n, "int8 weight input"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(cb, n, "int8 weight output"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(scb, rows, "int8 SCB output"));
  internal::DispatchFloat(
      type, [&](auto t) { QuantizeRowwiseImpl<decltype(t)::value>(weight, rows, cols, cb, scb); });
  return absl::OkStatus();
}

absl::Status DequantizeRowwiseInt8(const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                                   ScalarType output_type, void* output) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(rows, cols, output_type, "int8 dequantization output"));
  const int64_t n = rows * cols;
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(cb, n, "int8 weight"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(scb, rows, "int8 SCB"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(output, n, "int8 dequantization output"));
  internal::DispatchFloat(output_type, [&](auto t) {
    DequantizeRowwiseImpl<decltype(t)::value>(cb, scb, rows, cols, output);
  });
  return absl::OkStatus();
}

absl::StatusOr<Int8Activations> QuantizeActivationsInt8(const void* x, ScalarType type, int64_t m,
                                                        int64_t k, float threshold) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(m, k, type, "int8 activations"));
  if (!(threshold >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("int8 outlier threshold must be >= 0, got ", threshold));
  }
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(x, m * k, "int8 activations input"));
  Int8Activations out;
  out.ca.assign(m * k, 0);
  out.sca.assign(m, 0.0f);
  const bool decompose = threshold > 0.0f;
  std::vector<bool> outlier_col(k, false);
  // kInt8VectorQuant: row absmax over |x| < threshold; outlier elements are written as 0.
  for (int64_t r = 0; r < m; ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < k; ++c) {
      const float a = fabsf(LoadAsHalf(x, type, r * k + c));
      if (decompose && a >= threshold) {
        outlier_col[c] = true;
        continue;
      }
      amax = fmaxf(amax, a);
    }
    out.sca[r] = amax;
    const float scale = Int8Scale(amax);
    for (int64_t c = 0; c < k; ++c) {
      const float v = LoadAsHalf(x, type, r * k + c);
      if (decompose && fabsf(v) >= threshold) continue;
      out.ca[r * k + c] = RoundToInt8(v * scale);
    }
  }
  for (int64_t c = 0; c < k; ++c) {
    if (!outlier_col[c]) continue;
    out.outlier_cols.push_back(c);
    // bnb zeroes whole outlier columns only when there is more than one row.
    if (m > 1) {
      for (int64_t r = 0; r < m; ++r) out.ca[r * k + c] = 0;
    }
  }
  return out;
}

absl::Status Int8MatmulDequant(const int8_t* ca, const float* sca, int64_t m, int64_t k,
                               const int8_t* cb, const float* scb, int64_t n, const void* bias,
                               ScalarType out_type, void* y) {
  KBITD_RETURN_IF_ERROR(CheckMatrix(m, k, out_type, "int8 matmul output"));
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("int8 matmul: n = ", n, " < 0"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(ca, m * k, "int8 matmul activations"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(sca, m, "int8 matmul SCA"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(cb, n * k, "int8 matmul weight"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(scb, n, "int8 matmul SCB"));
  KBITD_RETURN_IF_ERROR(internal::CheckPointer(y, m * n, "int8 matmul output"));
  const bool fp16_bias = bias != nullptr && out_type == ScalarType::kFloat16;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t o = 0; o < n; ++o) {
      // Exact int32 dot product (cuBLASLt int8 GEMM).
      int32_t acc = 0;
      const int8_t* a_row = ca + r * k;
      const int8_t* b_row = cb + o * k;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<int32_t>(a_row[c]) * b_row[c];
      // kdequant_mm_int32_fp16: fp16(fmaf((C * SCA) * SCB, 1/127^2, bias)), bias fused only when
      // it is fp16; other biases are added to the fp16 result afterwards (out.add_(bias)).
      const float scaled = (static_cast<float>(acc) * sca[r]) * scb[o];
      const float fused_bias = fp16_bias ? LoadAsFloat(bias, out_type, o) : 0.0f;
      float out = HalfToFloat(FloatToHalf(std::fma(scaled, kInt8MatmulDequantScale, fused_bias)));
      if (bias != nullptr && !fp16_bias) {
        out = HalfToFloat(FloatToHalf(out + LoadAsFloat(bias, out_type, o)));
      }
      StoreFromFloat(y, out_type, r * n + o, out);  // .to(dtype) of the fp16 result
    }
  }
  return absl::OkStatus();
}

absl::Status Int8Linear(const void* x, ScalarType x_type, int64_t m, int64_t k, const int8_t* cb,
                        const float* scb, int64_t n, const void* bias, float threshold, void* y) {
  KBITD_ASSIGN_OR_RETURN(Int8Activations act, QuantizeActivationsInt8(x, x_type, m, k, threshold));
  KBITD_RETURN_IF_ERROR(
      Int8MatmulDequant(act.ca.data(), act.sca.data(), m, k, cb, scb, n, bias, x_type, y));
  // Outlier part (bnb int8_mixed_scaled_mm): output.addmm(x[:, cols], subB) with
  // subB = int8_vectorwise_dequant(CB[:, cols], SCB).to(x.dtype); fp32 sum, one rounding.
  const int64_t ncols = static_cast<int64_t>(act.outlier_cols.size());
  if (ncols == 0) return absl::OkStatus();
  std::vector<float> sub_b(ncols * n);
  for (int64_t j = 0; j < ncols; ++j) {
    for (int64_t o = 0; o < n; ++o) {
      const float w =
          (static_cast<float>(cb[o * k + act.outlier_cols[j]]) * scb[o]) * kInt8DequantScale;
      // Round to x's dtype (a no-op for fp32).
      uint32_t bits = 0;
      StoreFromFloat(&bits, x_type, 0, w);
      sub_b[j * n + o] = LoadAsFloat(&bits, x_type, 0);
    }
  }
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t o = 0; o < n; ++o) {
      float sum = 0.0f;
      for (int64_t j = 0; j < ncols; ++j) {
        sum += LoadAsFloat(x, x_type, r * k + act.outlier_cols[j]) * sub_b[j * n + o];
      }
      StoreFromFloat(y, x_type, r * n + o, LoadAsFloat(y, x_type, r * n + o) + sum);
    }
  }
  return absl::OkStatus();
}

}  // namespace kbitd::quant
