#include "runtime/model.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/cpu/cpu_backend.h"

namespace kbitd::runtime {

int64_t LinearWeight::resident_bytes() const {
  const int64_t n = out_features * in_features;
  switch (format) {
    case Format::kDense:
      return n * static_cast<int64_t>(ScalarTypeSize(dense_dtype));
    case Format::kFourBit: {
      int64_t blocks = num_blocks();
      int64_t scales =
          nested ? blocks + 4 * ((blocks + nested_blocksize - 1) / nested_blocksize) : 4 * blocks;
      return (n + 1) / 2 + scales;
    }
    case Format::kInt8Rowwise:
      return n + 4 * out_features;
  }
  return 0;
}

Model::Model(Parts parts) : parts_(std::move(parts)) {
  for (const LayerWeights& layer : parts_.weights.layers) {
    for (const LinearWeight* w : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
                                  &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      linears_[w->name] = w;
    }
  }
  linears_[parts_.weights.lm_head.name] = &parts_.weights.lm_head;
}

Model::~Model() = default;

int64_t Model::weight_bytes() const {
  return parts_.host_pool->owner_bytes(parts_.name, MemoryCategory::kWeights);
}

std::vector<DeviceMemoryUsage> Model::memory_usage() const {
  DeviceMemoryUsage usage;
  usage.device = parts_.host_pool->device();
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    usage.bytes[c] = parts_.host_pool->owner_bytes(parts_.name, static_cast<MemoryCategory>(c));
  }
  return {usage};
}

std::vector<std::string> Model::LinearNames() const {
  std::vector<std::string> names;
  for (const auto& [name, w] : linears_) names.push_back(name);
  return names;
}

const LinearWeight* Model::FindLinear(std::string_view name) const {
  auto it = linears_.find(name);
  return it == linears_.end() ? nullptr : it->second;
}

absl::Status Model::DequantizeLinear(std::string_view name, ScalarType dtype,
                                     std::vector<uint8_t>* out, std::vector<int64_t>* shape) const {
  const LinearWeight* w = FindLinear(name);
  if (w == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model ", parts_.name, " has no linear layer \"", std::string(name), "\""));
  }
  if (dtype != ScalarType::kFloat32 && dtype != ScalarType::kFloat16 &&
      dtype != ScalarType::kBFloat16) {
    return absl::InvalidArgumentError(
        "dequantize: output dtype must be float32, float16 or bfloat16");
  }
  const int64_t n = w->out_features * w->in_features;
  *shape = {w->out_features, w->in_features};
  out->assign(n * ScalarTypeSize(dtype), 0);
  for (int64_t i = 0; i < n; ++i) {
    float v = 0;
    switch (w->format) {
      case LinearWeight::Format::kDense:
        v = LoadAsFloat(w->dense, w->dense_dtype, i);
        break;
      case LinearWeight::Format::kFourBit: {
        uint8_t byte = w->packed[i / 2];
        v = w->code[i % 2 == 0 ? byte >> 4 : byte & 0xF] * FourBitScale(*w, i / w->blocksize);
        break;
      }
      case LinearWeight::Format::kInt8Rowwise:
        // int8_vectorwise_dequant: CB * SCB * f32(1/127) (bnb-spec §6.1).
        v = static_cast<float>(w->cb[i]) * w->scb[i / w->in_features] * 7.874015718698502e-3f;
        break;
    }
    StoreFromFloat(out->data(), dtype, i, v);
  }
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
