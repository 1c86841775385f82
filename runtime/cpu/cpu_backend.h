// Backend on the host CPU: multi-threaded (ThreadPool over output rows / heads), float32
// activations, fused dequantize-and-multiply for bitsandbytes 4-bit weights and LLM.int8 through
// quant's int8 functions. Owned and driven by one engine thread.
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

  void Embedding(const ModelWeights& weights, const int32_t* tokens, Tensor out) override;
  absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y) override;
  void RmsNorm(const Tensor& x, const float* weight, float eps, Tensor y) override;
  void Rope(Tensor q, Tensor k, int64_t head_dim, const int32_t* positions,
            const std::vector<float>& inv_freq) override;
  void WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
               const AttentionBatch& batch) override;
  void Attention(const KvCache& cache, int64_t layer, const Tensor& q, const AttentionBatch& batch,
                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, Tensor out) override;
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor out) override;
  void Add(Tensor x, const Tensor& y) override;
  void RoundTo(Tensor x, ScalarType dtype) override;
  void GatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor out) override;
  void CopyToHost(const Tensor& x, float* host) override;

 private:
  absl::Status DenseLinear(const LinearWeight& w, const Tensor& x, Tensor y);
  absl::Status FourBitLinear(const LinearWeight& w, const Tensor& x, Tensor y);
  absl::Status Int8Linear(const LinearWeight& w, const Tensor& x, Tensor y);

  Device device_;
  ThreadPool pool_;
};

}  // namespace kbitd::runtime
