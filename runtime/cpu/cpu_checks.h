// The CPU backend's argument checks (the error contract of runtime/backend.h): a tensor of the
// wrong shape, dtype or device is INVALID_ARGUMENT naming the op and the shapes, before any kernel
// touches memory. Each check is O(1) per tensor, or O(tokens) (O(tokens x blocks) for attention)
// where indices are bounds-checked, so decode speed does not notice them.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "runtime/model_weights.h"
#include "runtime/tensor.h"

namespace kbitd::runtime::cpu {

// "[3, 64] float32 on cpu" (or "undefined"), for messages.
std::string Describe(const Tensor& t);

// float32 host tensors with data.
absl::Status CheckFloat32(const char* op, std::initializer_list<const Tensor*> tensors);
// A float32 host matrix [rows, cols]; -1 accepts any size in that dimension.
absl::Status CheckMatrix(const char* op, const char* what, const Tensor& t, int64_t rows,
                         int64_t cols);
// `count` int32 host values.
absl::Status CheckInt32(const char* op, const Tensor& t, int64_t count);
absl::Status CheckSameSize(const char* op, const Tensor& a, const Tensor& b);

// x [m, in] and y [m, out] float32, and every tensor of the weight on the host with the element
// count and dtype its format stores.
absl::Status CheckLinear(const LinearWeight& w, const Tensor& x, const Tensor& y);

// The step's positions, token sequences and block tables for `tokens` tokens, on the host.
absl::Status CheckStep(const char* op, const StepInputs& step, int64_t tokens);
// A float32 host cache that has `layer`.
absl::Status CheckKvCache(const char* op, const KvCache& cache, int64_t layer);
// Every KV slot the tokens of `step` reach is in the cache: the sequence is a row of the block
// tables, the position within it, and the blocks of positions [0, position] (`history`) or of the
// position alone are cache blocks. Call after CheckStep.
absl::Status CheckSlots(const char* op, const KvCache& cache, const StepInputs& step,
                        int64_t tokens, bool history);

}  // namespace kbitd::runtime::cpu
