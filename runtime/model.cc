#include "runtime/model.h"

#include <cstring>
#include <iterator>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/device_set.h"

namespace kbitd::runtime {

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
  return parts_.pool->owner_bytes(parts_.name, MemoryCategory::kWeights);
}

std::vector<DeviceMemoryUsage> Model::memory_usage() const {
  DeviceMemoryUsage usage;
  usage.device = parts_.pool->device();
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    usage.bytes[c] = parts_.pool->owner_bytes(parts_.name, static_cast<MemoryCategory>(c));
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

absl::Status Model::CopyToHost(const Tensor& tensor, std::vector<uint8_t>* host) const {
  host->resize(static_cast<size_t>(tensor.bytes()));
  if (host->empty()) return absl::OkStatus();
  if (tensor.device.is_cpu()) {
    std::memcpy(host->data(), tensor.data, host->size());
    return absl::OkStatus();
  }
  // Off the host: the owning device's backend copies it (the one path that reads device memory).
  KBITD_ASSIGN_OR_RETURN(Backend * backend, parts_.devices->BackendFor(tensor.device));
  Tensor dst = tensor;
  dst.data = host->data();
  dst.device = Device::Cpu();
  KBITD_RETURN_IF_ERROR(backend->CopyTo(tensor, dst));
  return backend->Synchronize();
}

// A linear weight with every tensor copied to the host (`storage` owns the bytes), or the weight
// itself when it is already there.
absl::StatusOr<const LinearWeight*> Model::HostLinear(const LinearWeight& w,
                                                      std::vector<std::vector<uint8_t>>* storage,
                                                      LinearWeight* copy) const {
  if (w.device().is_cpu()) return &w;
  copy->name = w.name;
  copy->quant_type = w.quant_type;
  copy->out_features = w.out_features;
  copy->in_features = w.in_features;
  copy->original_dtype = w.original_dtype;
  copy->code = w.code;
  copy->blocksize = w.blocksize;
  copy->nested_code = w.nested_code;
  copy->nested_offset = w.nested_offset;
  copy->nested_blocksize = w.nested_blocksize;
  copy->threshold = w.threshold;
  copy->gptq = w.gptq;
  std::pair<const Tensor*, Tensor*> tensors[] = {{&w.dense, &copy->dense},
                                                 {&w.packed, &copy->packed},
                                                 {&w.absmax, &copy->absmax},
                                                 {&w.absmax_codes, &copy->absmax_codes},
                                                 {&w.nested_absmax, &copy->nested_absmax},
                                                 {&w.cb, &copy->cb},
                                                 {&w.scb, &copy->scb},
                                                 {&w.qweight, &copy->qweight},
                                                 {&w.qzeros, &copy->qzeros},
                                                 {&w.scales, &copy->scales},
                                                 {&w.g_idx, &copy->g_idx},
                                                 {&w.bias, &copy->bias}};
  static_assert(std::size(tensors) == std::tuple_size_v<decltype(w.parts())>,
                "copy every tensor of a LinearWeight");
  for (auto [src, dst] : tensors) {
    if (!src->defined()) continue;
    storage->emplace_back();
    KBITD_RETURN_IF_ERROR(CopyToHost(*src, &storage->back()));
    *dst = *src;
    dst->data = storage->back().data();
    dst->device = Device::Cpu();
  }
  return copy;
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
  std::vector<std::vector<uint8_t>> host_storage;
  LinearWeight host_copy;
  KBITD_ASSIGN_OR_RETURN(w, HostLinear(*w, &host_storage, &host_copy));
  const int64_t n = w->out_features * w->in_features;
  *shape = {w->out_features, w->in_features};
  out->assign(n * ScalarTypeSize(dtype), 0);
  if (w->is_gptq()) {
    // fp32 exact (quant/gptq.h), one rounding to `dtype`.
    const quant::GptqView view = GptqViewOf(*w);
    KBITD_RETURN_IF_ERROR(quant::ValidateGptq(view));
    std::vector<float> row(w->in_features);
    for (int64_t r = 0; r < w->out_features; ++r) {
      quant::DequantizeGptqRows(view, r, 1, row.data());
      for (int64_t k = 0; k < w->in_features; ++k) {
        StoreFromFloat(out->data(), dtype, r * w->in_features + k, row[k]);
      }
    }
    return absl::OkStatus();
  }
  for (int64_t i = 0; i < n; ++i) {
    float v = 0;
    if (w->is_dense()) {
      v = LoadAsFloat(w->dense.data, w->dense.dtype, i);
    } else if (w->is_four_bit()) {
      uint8_t byte = w->packed.as<const uint8_t>()[i / 2];
      v = w->code[i % 2 == 0 ? byte >> 4 : byte & 0xF] * FourBitScale(*w, i / w->blocksize);
    } else {
      // int8_vectorwise_dequant: CB * SCB * f32(1/127) (bnb-spec §6.1).
      v = static_cast<float>(w->cb.as<const int8_t>()[i]) *
          w->scb.as<const float>()[i / w->in_features] * 7.874015718698502e-3f;
    }
    StoreFromFloat(out->data(), dtype, i, v);
  }
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
