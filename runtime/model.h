// A loaded model: config, tokenizer, resident weights and their accounting. Immutable after
// loading, so engines on several threads may share one Model through shared_ptr. Created by
// runtime/loader.h into the pools of a DeviceSet, which must outlive it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/device.h"
#include "runtime/memory_pool.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "runtime/placement.h"

namespace kbitd::runtime {

class Tokenizer;  // runtime/tokenizer/tokenizer.h
class DeviceSet;  // runtime/device_set.h

struct DeviceMemoryUsage {
  Device device;
  int64_t bytes[kNumMemoryCategories] = {0, 0, 0};
};

class Model {
 public:
  struct Parts {
    std::string name;  // owner name in the memory pools
    ModelConfig config;
    std::shared_ptr<const Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
    ModelWeights weights;
    // The devices it was loaded onto (not owned; must outlive the model) and the pool of its home
    // device, shared with the other models there; its engines' KV cache and workspace come from
    // it too.
    const DeviceSet* devices = nullptr;
    std::shared_ptr<MemoryPool> pool;
    // Keep the model's own max_memory in force on each device while it lives
    // (MemoryPool::LimitOwner).
    std::vector<std::shared_ptr<void>> memory_limits;
    PlacementPlan placement;  // where each module was loaded
    // Compute dtype of activations (bnb_4bit_compute_dtype / torch_dtype); the CPU backend
    // computes in float32 and rounds activations to this dtype at linear-layer inputs.
    ScalarType compute_dtype = ScalarType::kFloat32;
    int64_t parameter_count = 0;
  };
  explicit Model(Parts parts);
  ~Model();

  const std::string& name() const { return parts_.name; }
  const ModelConfig& config() const { return parts_.config; }
  const Tokenizer* tokenizer() const { return parts_.tokenizer.get(); }
  const ModelWeights& weights() const { return parts_.weights; }
  ScalarType compute_dtype() const { return parts_.compute_dtype; }
  // The device its engines run on and that device's pool.
  const Device& device() const { return parts_.pool->device(); }
  const std::shared_ptr<MemoryPool>& pool() const { return parts_.pool; }
  const DeviceSet& devices() const { return *parts_.devices; }
  const PlacementPlan& placement() const { return parts_.placement; }

  int64_t parameter_count() const { return parts_.parameter_count; }
  // Bytes of resident weights (quantized where quantized) and what they would take in fp16.
  int64_t weight_bytes() const;
  int64_t fp16_equivalent_bytes() const { return 2 * parameter_count(); }
  // This model's bytes per device and category (weights; KV cache and workspace of its engines).
  std::vector<DeviceMemoryUsage> memory_usage() const;

  // Linear layers by module name ("model.layers.0.mlp.down_proj", "lm_head").
  std::vector<std::string> LinearNames() const;
  const LinearWeight* FindLinear(std::string_view name) const;
  // Dequantized (or copied, if dense) weight of a linear as [out, in] in `dtype` (F32/F16/BF16),
  // the result bitsandbytes' dequantize_4bit / int8_vectorwise_dequant gives. NOT_FOUND naming
  // the module for unknown names.
  // Copies a tensor of this model's weights into host memory (resized to its bytes): the one way
  // code outside the backends reads weights, so it works wherever they are placed.
  absl::Status CopyToHost(const Tensor& tensor, std::vector<uint8_t>* host) const;
  absl::Status DequantizeLinear(std::string_view name, ScalarType dtype, std::vector<uint8_t>* out,
                                std::vector<int64_t>* shape) const;

 private:
  absl::StatusOr<const LinearWeight*> HostLinear(const LinearWeight& w,
                                                 std::vector<std::vector<uint8_t>>* storage,
                                                 LinearWeight* copy) const;

  Parts parts_;
  std::map<std::string, const LinearWeight*, std::less<>> linears_;
};

}  // namespace kbitd::runtime
