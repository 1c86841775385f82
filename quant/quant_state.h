// QuantState: everything needed to dequantize one tensor, and bitsandbytes' exact state-dict keys
// (bnb-spec §5 for 4-bit, §6.3 for LLM.int8). No file I/O: works on named in-memory tensors, so
// runtime/ can feed it from safetensors and write it back.
//
// 4-bit keys for prefix "<p>" (e.g. "model.layers.0.self_attn.q_proj"), in bnb's order:
//   <p>.weight (packed bytes, dtype = quant_storage, shape ((n+1)//(2*itemsize), 1)),
//   <p>.weight.absmax (fp32 [nblocks], or uint8 codes when nested), <p>.weight.quant_map (fp32
//   [16]), [<p>.weight.nested_absmax, <p>.weight.nested_quant_map], and
//   <p>.weight.quant_state.bitsandbytes__nf4|fp4 (uint8 bytes of Python json.dumps of
//   {quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]}).
// LLM.int8 keys: <p>.weight (int8 [out, in]), <p>.SCB (fp32 [out]), <p>.weight_format (uint8 0-dim,
//   0 = "row"; the tiled formats 1..3 of bnb < 0.45 are refused).
// GPTQ keys (quant/gptq.h): <p>.qweight (I32), <p>.qzeros (I32), <p>.scales (F16), <p>.g_idx (I32);
//   bits, group size and zero format come from config.json (GptqParams), not from the tensors.
// <p>.bias is not part of the quantization state and is ignored here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "quant/double_quant.h"
#include "quant/gptq.h"

namespace kbitd::quant {

struct NamedTensor {
  std::string name;
  ScalarType dtype = ScalarType::kUInt8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

enum class QuantType : uint8_t { kNf4, kFp4, kInt8Blockwise, kInt8Rowwise, kGptq };
// "nf4", "fp4", "int8_blockwise", "int8_rowwise", "gptq" (the names the API and kbitq report).
std::string_view QuantTypeName(QuantType type);

// A GPTQ linear's tensors as stored (quant/gptq.h); the state's shape is {out, in}.
struct GptqTensors {
  GptqParams params;
  int64_t groups = 0;
  std::vector<int32_t> qweight;  // [in * bits / 32, out]
  std::vector<int32_t> qzeros;   // [groups, out * bits / 32]
  std::vector<uint16_t> scales;  // fp16 bits [groups, out]
  std::vector<int32_t> g_idx;    // [in]

  GptqView View(int64_t out_features, int64_t in_features) const;
};

struct QuantState {
  QuantType type = QuantType::kNf4;
  int64_t blocksize = 64;                         // 4-bit / 8-bit blockwise
  std::vector<int64_t> shape;                     // original tensor shape
  ScalarType dtype = ScalarType::kFloat16;        // original dtype (int8 rowwise: fp16)
  ScalarType quant_storage = ScalarType::kUInt8;  // dtype the packed bytes are declared as
  std::vector<uint8_t> data;           // 4-bit packed bytes / 8-bit codes / int8 CB bytes
  std::vector<float> absmax;           // when not nested
  std::optional<NestedAbsmax> nested;  // double quant
  std::vector<float> scb;              // int8 rowwise: row absmax [out]
  std::vector<float> code;             // quant_map (16) or 8-bit code (256)
  std::optional<GptqTensors> gptq;     // kGptq

  int64_t numel() const;
};

struct QuantizeOptions {
  QuantType type = QuantType::kNf4;
  int64_t blocksize = 64;                         // nf4/fp4 (transformers' default); 8-bit: 4096
  bool double_quant = false;                      // bnb_4bit_use_double_quant
  ScalarType quant_storage = ScalarType::kUInt8;  // bnb_4bit_quant_storage
};

// Quantizes one tensor (F32/F16/BF16, row-major `shape`) as bnb's Linear4bit (nf4/fp4, optional
// double quant), Linear8bitLt (int8 rowwise; `shape` must be 2-D [out, in]) or quantize_blockwise
// (int8 blockwise) do on the GPU, and returns the complete state.
absl::StatusOr<QuantState> QuantizeToState(const void* data, ScalarType dtype,
                                           std::vector<int64_t> shape,
                                           const QuantizeOptions& options);

// "<p>.weight.quant_state.bitsandbytes__nf4" JSON text, byte-identical to bnb's json.dumps of the
// same state (a double-quant offset that kbitd computed may be 1 ulp from bnb's own).
absl::StatusOr<std::string> QuantStateJson(const QuantState& state);

// The state-dict tensors bnb writes for `state` under `prefix`, in bnb's key order (without bias).
// kInt8Blockwise has no bnb module serialization and is refused.
absl::StatusOr<std::vector<NamedTensor>> ToStateDict(const QuantState& state,
                                                     std::string_view prefix);

// Reads the state of "<prefix>.weight" from `tensors` (other names are ignored unless they start
// with "<prefix>.weight." and are unknown, which is an error). Strict: sizes, dtypes, shapes,
// blocksize and JSON keys are validated with messages naming the tensor at fault.
absl::StatusOr<QuantState> FromStateDict(const std::vector<NamedTensor>& tensors,
                                         std::string_view prefix);

// Reads the GPTQ linear "<prefix>" (<prefix>.qweight, .qzeros, .scales, .g_idx; other names are
// ignored) into a kGptq state of shape {out, in}, dtype float16. Strict: dtypes, shapes against
// `params` and each other, and every g_idx in range, with messages naming the tensor at fault
// (INVALID_ARGUMENT; NOT_FOUND for a missing tensor).
absl::StatusOr<QuantState> GptqFromStateDict(const std::vector<NamedTensor>& tensors,
                                             std::string_view prefix, const GptqParams& params);

// Dequantizes the whole tensor into `output` (numel() elements of output_type: F32/F16/BF16).
absl::Status DequantizeState(const QuantState& state, ScalarType output_type, void* output);

}  // namespace kbitd::quant
