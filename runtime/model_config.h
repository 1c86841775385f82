// Hugging Face config.json for the decoder-only families kbitd runs: llama, mistral, qwen2 (one
// forward pass: RMSNorm, RoPE, GQA attention, SwiGLU MLP). Field names follow transformers'
// LlamaConfig / MistralConfig / Qwen2Config.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {

// transformers modeling_rope_utils: "default" (none), "linear", "llama3".
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  // llama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;    // "llama", "mistral" or "qwen2"
  std::string architecture;  // architectures[0], e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads (no GQA)
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for llama's attention_bias) projections have bias
  bool o_proj_bias = false;
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // mistral/qwen2; sequences longer than it are refused
  std::string hidden_act = "silu";
  ScalarType torch_dtype = ScalarType::kFloat32;  // dtype of the stored (unquantized) weights
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;              // eos_token_id may be an int or a list
  std::optional<QuantizationConfig> quantization;  // present for pre-quantized checkpoints

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
};

// Parses config.json text. `source` names the file in error messages. Unsupported model types,
// rope scaling types and activations are UNIMPLEMENTED; missing or bad values INVALID_ARGUMENT.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view source = "config.json");
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path);

}  // namespace kbitd::runtime
