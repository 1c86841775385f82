// The CUDA backend's element-wise, normalisation, RoPE and paged-attention kernels, one launcher
// per op. Public: no CUDA headers (`stream` is a cudaStream_t, pointers are device pointers). Each
// launcher takes the activation dtype (float32, float16 or bfloat16) and rounds like the PyTorch
// ops transformers runs in that dtype: every elementwise op computes in fp32 and rounds its result
// once to the dtype, so a bfloat16 model's activations match transformers' bit for bit op by op
// wherever the op order is the same. Reductions (RMSNorm's mean, attention) accumulate in fp32.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kbitd::runtime::cuda {

// Index checks on the device. Ids, positions, sequences, blocks and rows live in device memory, so
// checking them on the host would cost a synchronisation per op: instead a kernel that meets one
// out of range skips it (never reading or writing out of bounds) and sets its op's bit in a device
// flag word, which the backend reads when it synchronises and reports as INVALID_ARGUMENT naming
// the op.
enum ErrorFlag : int32_t {
  kBadToken = 1,      // Embedding: a token id outside the table
  kBadKvWrite = 2,    // WriteKv: a sequence, position or block outside the cache / tables
  kBadKvRead = 4,     // Attention: likewise, for any position it reads
  kBadGatherRow = 8,  // GatherRows: a row outside x
};

// out[t, :] = dtype(table[ids[t], :]); table of any float dtype. An id outside [0, vocab) leaves
// its row unwritten and sets kBadToken.
absl::Status LaunchEmbedding(const void* table, ScalarType table_dtype, int64_t vocab,
                             const int32_t* ids, int64_t tokens, int64_t hidden, void* out,
                             ScalarType dtype, int32_t* error_flags, void* stream);

// transformers LlamaRMSNorm: h = f32(x); h *= rsqrt(mean(h^2) + eps); y = dtype(w * f32(dtype(h))).
absl::Status LaunchRmsNorm(const void* x, const float* weight, float eps, int64_t rows,
                           int64_t features, void* y, ScalarType dtype, void* stream);

// apply_rotary_pos_emb in place on q [tokens, q_width] and k [tokens, k_width]: cos/sin of
// f32(inv_freq[i] * position) rounded to dtype, then q*cos + rotate_half(q)*sin op by op in dtype.
absl::Status LaunchRope(void* q, int64_t q_width, void* k, int64_t k_width, int64_t tokens,
                        int64_t head_dim, const int32_t* positions, const float* inv_freq,
                        ScalarType dtype, void* stream);

// Paged KV cache geometry of one layer: [num_blocks, block_size, kv_width] in `dtype`.
struct PagedKv {
  void* keys = nullptr;
  void* values = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};
// Per-token step inputs on the device (runtime/backend.h StepInputs).
struct StepPointers {
  const int32_t* positions = nullptr;
  const int32_t* token_sequence = nullptr;
  const int32_t* block_tables = nullptr;  // [sequences, max_blocks]
  int64_t sequences = 0;
  int64_t max_blocks = 0;
  int64_t tokens = 0;
  int32_t* error_flags = nullptr;
};

// Writes every token's k/v row [kv_width] into its slot; a token whose slot is out of range is
// skipped with kBadKvWrite.
absl::Status LaunchWriteKv(const PagedKv& cache, const StepPointers& step, const void* k,
                           const void* v, ScalarType dtype, void* stream);

// Causal GQA attention of each token over positions [0, position] of its sequence, softmax in
// fp32 with 1/sqrt(head_dim) scaling; out [tokens, num_heads * head_dim] in dtype. A token that
// would read a slot out of range is left unwritten with kBadKvRead.
absl::Status LaunchPagedAttention(const PagedKv& cache, const StepPointers& step, const void* q,
                                  int64_t num_heads, void* out, ScalarType dtype, void* stream);

// out = dtype(f32(dtype(silu(gate))) * up).
absl::Status LaunchSiluMul(const void* gate, const void* up, int64_t n, void* out, ScalarType dtype,
                           void* stream);
// x = dtype(x + y).
absl::Status LaunchAdd(void* x, const void* y, int64_t n, ScalarType dtype, void* stream);
// y[r, c] = y_dtype(y[r, c] + bias[c]) (bias float32).
absl::Status LaunchAddBias(void* y, const float* bias, int64_t rows, int64_t cols,
                           ScalarType y_dtype, void* stream);
// In place: x (of x_dtype) rounded to `dtype` and back (compute-dtype emulation).
absl::Status LaunchRoundTo(void* x, ScalarType x_dtype, int64_t n, ScalarType dtype, void* stream);
// dst[i] = dst_dtype(src[i]) for float dtypes.
absl::Status LaunchConvert(const void* src, ScalarType src_dtype, int64_t n, void* dst,
                           ScalarType dst_dtype, void* stream);
// out[i, :] = x[rows[i], :], rows of `row_bytes` bytes; a row outside [0, x_rows) is skipped with
// kBadGatherRow.
absl::Status LaunchGatherRows(const void* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows,
                              int64_t count, void* out, int32_t* error_flags, void* stream);

// Per row of logits [rows, vocab] (float32): tokens[r] = the first index of the largest non-NaN
// logit (0 if none), logprobs[r] = its log-softmax, logit − (f32(log Σ exp(f64(v − max))) + max),
// as runtime/sampler.h PickGreedy computes it (the fp64 sum may differ in its last bits from the
// host's by summation order).
absl::Status LaunchGreedySample(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens,
                                float* logprobs, void* stream);

}  // namespace kbitd::runtime::cuda
