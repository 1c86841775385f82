// The kernels one device runs (contract v2). The transformer forward (llama_forward.h) is written
// once against this interface; the CPU backend (cpu/cpu_backend.h) is the exact reference and the
// CUDA backend implements the same ops.
//
// The contract:
//  - Every op returns a status: a shape or dtype the backend cannot run is INVALID_ARGUMENT or
//    UNIMPLEMENTED naming the op, and a device error surfaces at the op that saw it. Indices held
//    in device memory (token ids, positions, sequences, blocks, rows) are checked where they are
//    read: on the host by the op itself; on a GPU by the kernel, which skips what is out of range
//    and makes the next Synchronize return INVALID_ARGUMENT naming the op (checking on the host
//    would cost a synchronisation per op).
//  - Tensors are on the backend's device, except where an op says otherwise (CopyTo reads or
//    writes the host). Weights come from ModelWeights in their stored formats.
//  - Activations are 2-D [tokens, features] in ActivationDtype(compute dtype): float32 on the CPU
//    (which emulates narrower compute dtypes with RoundTo), the compute dtype itself on a GPU.
//    Logits (the lm_head output) are float32 on every backend.
//  - Ops run in order on the device's one stream; only Synchronize (and CopyTo into the host
//    followed by Synchronize) waits for them. A backend is driven by one thread: the worker of its
//    device.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "quant/blockwise_4bit.h"
#include "runtime/device.h"
#include "runtime/kv_cache.h"
#include "runtime/model_weights.h"
#include "runtime/tensor.h"

namespace kbitd::runtime {

// The per-step inputs of a flattened batch of T tokens from S sequences, int32 tensors on the
// backend's device. The engine builds them on the host and copies them once per step.
struct StepInputs {
  Tensor tokens;          // [T] token ids
  Tensor positions;       // [T] position of each token within its sequence
  Tensor token_sequence;  // [T] row of the token's sequence in block_tables
  Tensor block_tables;    // [S, max_blocks] physical KV block of each logical block
  Tensor logit_rows;      // [R] rows of the batch whose logits are wanted
};

// Attention geometry of a model (GQA: num_heads is a multiple of num_kv_heads).
struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const Device& device() const = 0;

  // The dtype of activations for a model that computes in `compute_dtype`.
  virtual ScalarType ActivationDtype(ScalarType compute_dtype) const = 0;
  // The dtype of KV cache entries for a model that computes in `compute_dtype`.
  virtual ScalarType KvCacheDtype(ScalarType compute_dtype) const = 0;

  // out[t, :] = embed_tokens[tokens[t], :] in out's dtype.
  virtual absl::Status Embedding(const Tensor& embed_tokens, const Tensor& tokens, Tensor out) = 0;
  // y[m, out] = x[m, in] W^T + bias for every LinearWeight format (dense, NF4/FP4 with or without
  // double quant, LLM.int8 with outlier decomposition).
  virtual absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y) = 0;
  // y = x / sqrt(mean(x^2) + eps) * weight (transformers LlamaRMSNorm; weight float32 [features]).
  virtual absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor y) = 0;
  // Rotates q [T, heads*head_dim] and k [T, kv_heads*head_dim] in place by the tokens' positions
  // (rotate_half convention of transformers' apply_rotary_pos_emb). inv_freq: float32
  // [head_dim / 2] on the device, prepared once per model.
  virtual absl::Status Rope(Tensor q, Tensor k, int64_t head_dim, const Tensor& positions,
                            const Tensor& inv_freq) = 0;
  // Stores the k/v rows of every token into its KV slot for `layer`.
  virtual absl::Status WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                               const StepInputs& step) = 0;
  // Causal attention of each token over its own sequence's positions [0, position].
  virtual absl::Status Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                                 const StepInputs& step, const AttentionShape& shape,
                                 Tensor out) = 0;
  // out = silu(gate) * up.
  virtual absl::Status SiluMul(const Tensor& gate, const Tensor& up, Tensor out) = 0;
  // x += y (residual).
  virtual absl::Status Add(Tensor x, const Tensor& y) = 0;
  // Rounds every element to `dtype` and back (compute-dtype emulation); no-op when x already is in
  // `dtype` or `dtype` is float32.
  virtual absl::Status RoundTo(Tensor x, ScalarType dtype) = 0;
  // out[i, :] = x[rows[i], :].
  virtual absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor out) = 0;
  // Greedy sampling where the logits are: for each row of logits float32 [rows, vocab], tokens
  // int32 [rows] and logprobs float32 [rows] get runtime/sampler.h PickGreedy's answer, so a
  // greedy step moves 8 bytes a row to the host instead of the vocabulary's logits.
  virtual absl::Status GreedySample(const Tensor& logits, Tensor tokens, Tensor logprobs) = 0;

  // Quantize-on-load, byte-identical on every backend to quant/'s CPU reference (bitsandbytes'
  // formats), so a weight is quantized where it will live. `dense` is a float weight (float32,
  // float16 or bfloat16) of n elements; every tensor is on this device.
  // packed: uint8 [ceil(n / 2)]; absmax: float32 [ceil(n / blocksize)].
  virtual absl::Status Quantize4bit(quant::FourBitType type, const Tensor& dense, int64_t blocksize,
                                    Tensor packed, Tensor absmax) = 0;
  // bitsandbytes' double quantization of 4-bit absmax (the dynamic map, 256 blocks a group):
  // codes uint8 [blocks], nested_absmax float32 [ceil(blocks / 256)], offset float32 [1].
  virtual absl::Status DoubleQuantize(const Tensor& absmax, Tensor codes, Tensor nested_absmax,
                                      Tensor offset) = 0;
  // LLM.int8 row-wise weight quantization of dense [rows, cols]: cb int8 [rows, cols], scb float32
  // [rows].
  virtual absl::Status QuantizeRowwiseInt8(const Tensor& dense, Tensor cb, Tensor scb) = 0;

  // Copies src into dst (same dtype and element count). Each is on the host or on this device; a
  // backend that can reach another device directly (CUDA peer access) may also take that device.
  // Ordered with the ops: a host destination is complete after Synchronize().
  virtual absl::Status CopyTo(const Tensor& src, Tensor dst) = 0;
  // Waits until every op issued so far has finished; reports an error a previous op left.
  virtual absl::Status Synchronize() = 0;
  // Called before `layer` runs, so that weights kept elsewhere (offloaded to the host) can be
  // brought in ahead of use. Backends whose weights are all resident do nothing.
  virtual absl::Status Prefetch(const LayerWeights& layer) = 0;
};

}  // namespace kbitd::runtime
