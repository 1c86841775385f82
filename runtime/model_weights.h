// Resident weights of one decoder-only model in the layout the backends read. Every array is a
// Tensor view (device, dtype, shape) into Buffers the weights own, so a backend can check it was
// handed memory of its own device. A linear layer is dense (float32/float16/bfloat16, [out, in]
// row-major as in the checkpoint) or quantized in one of quant::QuantType's formats: bitsandbytes
// 4-bit (NF4/FP4 packed two per byte, first element in the high nibble, blockwise absmax that may
// itself be 8-bit "double" quantized), LLM.int8 row-wise (int8 CB [out, in] + fp32 SCB [out]) or
// GPTQ (qweight / qzeros / scales / g_idx as the checkpoint stores them, quant/gptq.h).
// Layouts and key names: docs/bnb-spec.md §2, §4, §5, §6; quant/gptq.h.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "quant/gptq.h"
#include "quant/quant_state.h"
#include "runtime/memory_pool.h"
#include "runtime/tensor.h"

namespace kbitd::runtime {

struct LinearWeight {
  std::string name;  // module name, e.g. "model.layers.0.self_attn.q_proj"
  // The quantized format, the enum quant/ uses for QuantState; nullopt = dense.
  std::optional<quant::QuantType> quant_type;
  int64_t out_features = 0;
  int64_t in_features = 0;
  ScalarType original_dtype = ScalarType::kFloat32;  // dtype of the unquantized weight

  // Dense: [out, in] in float32/float16/bfloat16. A view into `storage` or, for a tied lm_head,
  // into the embedding's storage.
  Tensor dense;

  // kNf4 / kFp4.
  std::array<float, 16> code{};  // the 16-entry LUT (quant_map); constants, kept on the host
  int64_t blocksize = 64;
  Tensor packed;  // uint8 [(out*in + 1) / 2]
  Tensor absmax;  // float32 [blocks] when not nested
  // Double quantization (bnb compress_statistics): absmax[b] =
  //   f32(nested_code[absmax_codes[b]] * nested_absmax[b / nested_blocksize]) + offset.
  Tensor absmax_codes;   // uint8 [blocks]
  Tensor nested_absmax;  // float32 [ceil(blocks / nested_blocksize)]
  std::array<float, 256> nested_code{};
  float nested_offset = 0.0f;
  int64_t nested_blocksize = 256;

  // kInt8Rowwise (LLM.int8): W ~= cb[n, k] * scb[n] / 127.
  Tensor cb;               // int8 [out, in]
  Tensor scb;              // float32 [out]
  float threshold = 6.0f;  // outlier threshold for activations; 0 disables decomposition

  // kGptq (quant/gptq.h), kept as stored: w[n][k] = scales[g][n] * (q[k][n] - zero[g][n]) with
  // g = g_idx[k]; groups = quant::GptqGroups(in, gptq.group_size).
  quant::GptqParams gptq;  // bits, group size, zero format
  Tensor qweight;          // int32 [in * bits / 32, out]
  Tensor qzeros;           // int32 [groups, out * bits / 32]
  Tensor scales;           // float16 [groups, out]
  Tensor g_idx;            // int32 [in]

  Tensor bias;  // float32 [out]; undefined when the layer has none

  std::vector<Buffer> storage;  // owns what the tensors above view (except tied views)

  bool is_dense() const { return !quant_type.has_value(); }
  bool is_four_bit() const {
    return quant_type == quant::QuantType::kNf4 || quant_type == quant::QuantType::kFp4;
  }
  bool is_gptq() const { return quant_type == quant::QuantType::kGptq; }
  bool nested() const { return absmax_codes.defined(); }
  int64_t gptq_groups() const { return quant::GptqGroups(in_features, gptq.group_size); }
  // Its tensors by field name, defined or not, so that a check or a copy misses none.
  struct Part {
    const char* name;
    const Tensor* tensor;
  };
  std::array<Part, 12> parts() const {
    return {{{"dense", &dense},
             {"packed", &packed},
             {"absmax", &absmax},
             {"absmax_codes", &absmax_codes},
             {"nested_absmax", &nested_absmax},
             {"cb", &cb},
             {"scb", &scb},
             {"qweight", &qweight},
             {"qzeros", &qzeros},
             {"scales", &scales},
             {"g_idx", &g_idx},
             {"bias", &bias}}};
  }
  // The device of its data: that of its first defined tensor (all of a weight's tensors live on
  // one device; a backend checks each of them). The host when it has none.
  Device device() const;
  int64_t num_blocks() const { return (out_features * in_features + blocksize - 1) / blocksize; }
  // Bytes the weight occupies as stored (what a matmul must stream), bias excluded.
  int64_t resident_bytes() const;
};

// Block scale of a 4-bit weight whose scales are in host memory: absmax[b], or its double-quantized
// reconstruction f32(nested_code[codes[b]] * nested_absmax[b / nested_blocksize]) + offset
// (bnb-spec §4).
inline float FourBitScale(const LinearWeight& w, int64_t block) {
  if (!w.nested()) return w.absmax.as<const float>()[block];
  float v = w.nested_code[w.absmax_codes.as<const uint8_t>()[block]] *
            w.nested_absmax.as<const float>()[block / w.nested_blocksize];
  return v + w.nested_offset;
}

// FourBitScale for `count` consecutive blocks from `first`, without a division per block (the
// nested group advances every nested_blocksize blocks): the double-quant decode loop's hot path.
inline void FourBitScales(const LinearWeight& w, int64_t first, int64_t count, float* out) {
  if (!w.nested()) {
    std::copy_n(w.absmax.as<const float>() + first, count, out);
    return;
  }
  const uint8_t* codes = w.absmax_codes.as<const uint8_t>();
  const float* nested_absmax = w.nested_absmax.as<const float>();
  int64_t group = first / w.nested_blocksize;
  int64_t group_end = (group + 1) * w.nested_blocksize;
  for (int64_t b = first; b < first + count; ++b) {
    if (b == group_end) {
      ++group;
      group_end += w.nested_blocksize;
    }
    float v = w.nested_code[codes[b]] * nested_absmax[group];
    out[b - first] = v + w.nested_offset;
  }
}

// A GPTQ weight whose tensors are in host memory as quant/ reads it (CheckLinearWeight passed;
// the g_idx values are checked by quant::ValidateGptq).
inline quant::GptqView GptqViewOf(const LinearWeight& w) {
  quant::GptqView view;
  view.bits = w.gptq.bits;
  view.zero_format = w.gptq.zero_format;
  view.in_features = w.in_features;
  view.out_features = w.out_features;
  view.groups = w.gptq_groups();
  view.qweight = w.qweight.as<const int32_t>();
  view.qzeros = w.qzeros.as<const int32_t>();
  view.scales = w.scales.as<const uint16_t>();
  view.g_idx = w.g_idx.as<const int32_t>();
  return view;
}

struct LayerWeights {
  Tensor input_layernorm;           // float32 [hidden]
  Tensor post_attention_layernorm;  // float32 [hidden]
  LinearWeight q_proj, k_proj, v_proj, o_proj;
  LinearWeight gate_proj, up_proj, down_proj;
  std::vector<Buffer> storage;
};

struct ModelWeights {
  // Token embedding [vocab, hidden], kept in its checkpoint dtype (float32/16, bfloat16).
  Tensor embed_tokens;
  std::vector<LayerWeights> layers;
  Tensor final_norm;     // float32 [hidden]
  LinearWeight lm_head;  // a dense view of embed_tokens when tied
  std::vector<Buffer> storage;
};

// "[3, 64] float32 on cpu" (or "undefined"), for error messages.
std::string DescribeTensor(const Tensor& t);

// The weight's layout as its format stores it, for every backend's Linear: each tensor on
// `device` with the element count and dtype of its format (dense [out, in] float32/16/bfloat16;
// packed nibbles and absmax, or nested codes and groups; int8 cb and scb; GPTQ qweight, qzeros,
// float16 scales and g_idx for its bits and groups; a float32 bias of out_features).
// INVALID_ARGUMENT naming `op` and the tensor, UNIMPLEMENTED for 8-bit blockwise.
absl::Status CheckLinearWeight(const std::string& op, const LinearWeight& w, const Device& device);

}  // namespace kbitd::runtime
