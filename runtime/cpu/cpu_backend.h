// Backend on the host CPU: multi-threaded (ThreadPool over output rows / heads), float32
// activations, fused dequantize-and-multiply for bitsandbytes 4-bit weights and LLM.int8 through
// quant's int8 functions. Owned and driven by one engine thread.
#pragma once

#include <algorithm>
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

// Block scales of a 4-bit weight: absmax[b], or its double-quantized reconstruction
// f32(nested_code[codes[b]] * nested_absmax[b / nested_blocksize]) + offset (bnb-spec §4).
inline float FourBitScale(const LinearWeight& w, int64_t block) {
  if (!w.nested) return w.absmax[block];
  float v = w.nested_code[w.absmax_codes[block]] * w.nested_absmax[block / w.nested_blocksize];
  return v + w.nested_offset;
}

// FourBitScale for `count` consecutive blocks from `first`, without a division per block (the
// nested group advances every nested_blocksize blocks): the double-quant decode loop's hot path.
inline void FourBitScales(const LinearWeight& w, int64_t first, int64_t count, float* out) {
  if (!w.nested) {
    std::copy_n(w.absmax + first, count, out);
    return;
  }
  int64_t group = first / w.nested_blocksize;
  int64_t group_end = (group + 1) * w.nested_blocksize;
  for (int64_t b = first; b < first + count; ++b) {
    if (b == group_end) {
      ++group;
      group_end += w.nested_blocksize;
    }
    float v = w.nested_code[w.absmax_codes[b]] * w.nested_absmax[group];
    out[b - first] = v + w.nested_offset;
  }
}

}  // namespace kbitd::runtime
