// Resident weights of one decoder-only model in the layout the backends read. A linear layer is
// either dense (float32/float16/bfloat16, [out, in] row-major as in the checkpoint), bitsandbytes
// 4-bit (NF4/FP4 packed two per byte, first element in the high nibble, blockwise absmax that may
// itself be 8-bit "double" quantized) or LLM.int8 row-wise (int8 CB [out, in] + fp32 SCB [out]).
// Layouts and key names: docs/bnb-spec.md §2, §4, §5, §6.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime {

struct LinearWeight {
  enum class Format { kDense, kFourBit, kInt8Rowwise };
  std::string name;  // module name, e.g. "model.layers.0.self_attn.q_proj"
  Format format = Format::kDense;
  int64_t out_features = 0;
  int64_t in_features = 0;
  ScalarType original_dtype = ScalarType::kFloat32;  // dtype of the unquantized weight

  // kDense: [out, in] of dense_dtype. `dense` is a view: it points into `storage` or, for a tied
  // lm_head, into the embedding's storage.
  ScalarType dense_dtype = ScalarType::kFloat32;
  const void* dense = nullptr;

  // kFourBit.
  bool nf4 = true;               // false: FP4
  std::array<float, 16> code{};  // the 16-entry LUT (quant_map)
  int64_t blocksize = 64;
  const uint8_t* packed = nullptr;  // (out*in + 1) / 2 bytes
  const float* absmax = nullptr;    // one per block when not nested
  // Double quantization (bnb compress_statistics): absmax[b] =
  //   f32(nested_code[absmax_codes[b]] * nested_absmax[b / nested_blocksize]) + offset.
  bool nested = false;
  const uint8_t* absmax_codes = nullptr;
  const float* nested_absmax = nullptr;
  std::array<float, 256> nested_code{};
  float nested_offset = 0.0f;
  int64_t nested_blocksize = 256;

  // kInt8Rowwise (LLM.int8): W ~= cb[n, k] * scb[n] / 127.
  const int8_t* cb = nullptr;
  const float* scb = nullptr;
  float threshold = 6.0f;  // outlier threshold for activations; 0 disables decomposition

  const float* bias = nullptr;  // float32 [out] or null

  std::vector<Buffer> storage;  // owns what the pointers above point to (except tied views)

  int64_t num_blocks() const { return (out_features * in_features + blocksize - 1) / blocksize; }
  // Bytes the weight occupies as stored (what a matmul must stream), bias excluded.
  int64_t resident_bytes() const;
};

struct LayerWeights {
  const float* input_layernorm = nullptr;           // [hidden]
  const float* post_attention_layernorm = nullptr;  // [hidden]
  LinearWeight q_proj, k_proj, v_proj, o_proj;
  LinearWeight gate_proj, up_proj, down_proj;
  std::vector<Buffer> storage;
};

struct ModelWeights {
  // Token embedding [vocab, hidden], kept in its checkpoint dtype (float32/16, bfloat16).
  ScalarType embed_dtype = ScalarType::kFloat32;
  const void* embed_tokens = nullptr;
  std::vector<LayerWeights> layers;
  const float* final_norm = nullptr;  // [hidden]
  LinearWeight lm_head;               // a dense view of embed_tokens when tied
  std::vector<Buffer> storage;
};

}  // namespace kbitd::runtime
