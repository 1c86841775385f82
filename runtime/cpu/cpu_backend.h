// Backend on the host CPU: multi-threaded (ThreadPool over output rows / heads), float32
// activations and KV cache, fused dequantize-and-multiply for bitsandbytes 4-bit weights,
// LLM.int8 through quant's int8 functions, GPTQ weights dequantized a chunk of rows at a time. One
// per CPU device, owned by the DeviceSet and driven by that device's worker thread; its thread pool
// is shared by every engine on the device.
#pragma once

#include <memory>

#include "runtime/backend.h"
#include "runtime/cpu/thread_pool.h"

namespace kbitd::runtime {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int num_threads);
  const Device& device() const override { return device_; }
  int num_threads() const { return pool_.num_threads(); }

  ScalarType ActivationDtype(ScalarType) const override { return ScalarType::kFloat32; }
  ScalarType KvCacheDtype(ScalarType) const override { return ScalarType::kFloat32; }
  absl::Status Embedding(const Tensor& embed_tokens, const Tensor& tokens, Tensor out) override;
  absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor y) override;
  absl::Status Rope(Tensor q, Tensor k, int64_t head_dim, const Tensor& positions,
                    const Tensor& inv_freq) override;
  absl::Status WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                       const StepInputs& step) override;
  absl::Status Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                         const StepInputs& step, const AttentionShape& shape, Tensor out) override;
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, Tensor out) override;
  absl::Status Add(Tensor x, const Tensor& y) override;
  absl::Status RoundTo(Tensor x, ScalarType dtype) override;
  absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor out) override;
  absl::Status GreedySample(const Tensor& logits, Tensor tokens, Tensor logprobs) override;
  absl::Status Quantize4bit(quant::FourBitType type, const Tensor& dense, int64_t blocksize,
                            Tensor packed, Tensor absmax) override;
  absl::Status DoubleQuantize(const Tensor& absmax, Tensor codes, Tensor nested_absmax,
                              Tensor offset) override;
  absl::Status QuantizeRowwiseInt8(const Tensor& dense, Tensor cb, Tensor scb) override;
  absl::Status CopyTo(const Tensor& src, Tensor dst) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::Status Prefetch(const LayerWeights&) override { return absl::OkStatus(); }

 private:
  absl::Status DenseLinear(const LinearWeight& w, const Tensor& x, Tensor y);
  absl::Status FourBitLinear(const LinearWeight& w, const Tensor& x, Tensor y);
  absl::Status Int8Linear(const LinearWeight& w, const Tensor& x, Tensor y);
  absl::Status GptqLinear(const LinearWeight& w, const Tensor& x, Tensor y);

  Device device_;
  ThreadPool pool_;
};

// The CPU backend as a Backend, for runtime/device_set (the one place backends are made).
std::unique_ptr<Backend> NewCpuBackend(int num_threads);

}  // namespace kbitd::runtime
