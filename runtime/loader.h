// Loads a Hugging Face checkpoint folder (config.json, tokenizer.json, model.safetensors or a
// sharded model.safetensors.index.json) into a resident Model:
//  - a plain checkpoint is used as is, or quantized on load with bitsandbytes' formats when
//    LoadOptions.quantization asks for it (streamed layer by layer: host peak ~ one layer's
//    float weights + the resident model);
//  - a checkpoint saved by transformers + bitsandbytes (or kbitq), or a GPTQ checkpoint (GPTQModel,
//    AutoGPTQ, optimum: quantization_config.quant_method "gptq"), is loaded pre-quantized, its
//    config.json quantization_config taking precedence. GPTQ weights stay packed as stored
//    (quant/gptq.h); the CPU backend serves them, the CUDA backend not yet.
// Modules are skipped from quantization as transformers does (lm_head by default).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/device_set.h"
#include "runtime/memory_pool.h"
#include "runtime/model.h"
#include "runtime/placement.h"
#include "runtime/quantization_config.h"

namespace kbitd::runtime {

struct LoadProgress {
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  int64_t bytes_done = 0;  // checkpoint bytes read so far
  int64_t bytes_total = 0;
};

struct LoadOptions {
  std::string name = "model";  // owner name in memory pools and metrics
  std::string path;            // checkpoint folder
  // Quantize-on-load request; ignored (with a warning) for checkpoints that are already
  // quantized. nullopt = use the checkpoint as is.
  std::optional<QuantizationConfig> quantization;
  PlacementOptions placement;
  // The devices to load onto (not owned; required, and must outlive the model). The model's
  // bytes come from their pools, shared with the other models; placement.max_memory caps this
  // model within each device's own limit.
  const DeviceSet* devices = nullptr;
  std::function<void(const LoadProgress&)> progress;  // called after each tensor; may be null
  bool require_tokenizer = true;  // FAILED_PRECONDITION if tokenizer.json is missing
  // Activation dtype (transformers' from_pretrained(dtype=...)): float32, float16 or bfloat16.
  // nullopt = the checkpoint's torch_dtype. 4-bit models keep bnb_4bit_compute_dtype, the dtype
  // of their quantized matmuls, as transformers + bitsandbytes do.
  std::optional<ScalarType> compute_dtype;
};

// Errors name the file or tensor at fault: NOT_FOUND for missing files/tensors,
// INVALID_ARGUMENT for a path that is not a folder, wrong shapes/dtypes or a tokenizer whose
// vocabulary exceeds the embedding, UNIMPLEMENTED for unsupported architectures/rope scaling/quant
// types, RESOURCE_EXHAUSTED past max_memory. A failed load frees everything it allocated.
absl::StatusOr<std::shared_ptr<Model>> LoadModel(const LoadOptions& options);

// What LoadModel would do with `options`, without reading a weight or allocating device memory:
// the placement plan (each module's device and stored bytes, as LoadModel would follow it), the
// resident weight bytes and the activation dtype. It fails as LoadModel would before loading
// (a missing file, a bad config or quantization request, a model that does not fit the budgets,
// a format the planned device cannot serve), so a client can try a placement first.
struct LoadPlan {
  std::string architecture;
  PlacementPlan plan;
  int64_t weight_bytes = 0;
  ScalarType compute_dtype = ScalarType::kFloat32;
};
absl::StatusOr<LoadPlan> PlanLoad(const LoadOptions& options);

}  // namespace kbitd::runtime
