#include "runtime/cpu/cpu_checks.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/quant_state.h"

namespace kbitd::runtime::cpu {
namespace {

absl::Status Invalid(const char* op, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", message));
}

}  // namespace

std::string Describe(const Tensor& t) { return DescribeTensor(t); }

absl::Status CheckFloat32(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t->dtype != ScalarType::kFloat32 || !t->device.is_cpu() || !t->defined()) {
      return Invalid(
          op, absl::StrCat("the CPU backend takes float32 host tensors, got ", Describe(*t)));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckMatrix(const char* op, const char* what, const Tensor& t, int64_t rows,
                         int64_t cols) {
  KBITD_RETURN_IF_ERROR(CheckFloat32(op, {&t}));
  if (t.rank != 2 || (rows >= 0 && t.dim(0) != rows) || (cols >= 0 && t.dim(1) != cols)) {
    return Invalid(op, absl::StrCat(what, " is ", Describe(t), ", expected [",
                                    rows >= 0 ? absl::StrCat(rows) : "*", ", ",
                                    cols >= 0 ? absl::StrCat(cols) : "*", "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckInt32(const char* op, const Tensor& t, int64_t count) {
  if (t.dtype != ScalarType::kInt32 || !t.device.is_cpu() || t.numel() != count ||
      (count > 0 && !t.defined())) {
    return Invalid(op, absl::StrCat("expected ", count, " int32 host values, got ", Describe(t)));
  }
  return absl::OkStatus();
}

absl::Status CheckSameSize(const char* op, const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) {
    return Invalid(op, absl::StrCat(Describe(a), " and ", Describe(b), " differ in size"));
  }
  return absl::OkStatus();
}

absl::Status CheckLinear(const LinearWeight& w, const Tensor& x, const Tensor& y) {
  const std::string op = absl::StrCat("linear ", w.name);
  KBITD_RETURN_IF_ERROR(CheckMatrix(op.c_str(), "x", x, -1, w.in_features));
  KBITD_RETURN_IF_ERROR(CheckMatrix(op.c_str(), "y", y, x.dim(0), w.out_features));
  return CheckLinearWeight(op, w, Device::Cpu());
}

absl::Status CheckStep(const char* op, const StepInputs& step, int64_t tokens) {
  KBITD_RETURN_IF_ERROR(CheckInt32(op, step.positions, tokens));
  KBITD_RETURN_IF_ERROR(CheckInt32(op, step.token_sequence, tokens));
  const Tensor& tables = step.block_tables;
  if (tables.rank != 2 || tables.dtype != ScalarType::kInt32 || !tables.device.is_cpu() ||
      (tables.numel() > 0 && !tables.defined())) {
    return Invalid(op, absl::StrCat("block_tables must be int32 [S, blocks] on the host, got ",
                                    Describe(tables)));
  }
  return absl::OkStatus();
}

absl::Status CheckKvCache(const char* op, const KvCache& cache, int64_t layer) {
  if (cache.dtype() != ScalarType::kFloat32 || !cache.device().is_cpu()) {
    return absl::UnimplementedError(absl::StrCat(
        op, ": the CPU backend reads a float32 KV cache on the host, not ",
        std::string(TorchDtypeName(cache.dtype())), " on ", cache.device().ToString()));
  }
  if (layer < 0 || layer >= cache.num_layers()) {
    return Invalid(op, absl::StrCat("layer ", layer, " outside the cache's ", cache.num_layers()));
  }
  return absl::OkStatus();
}

absl::Status CheckSlots(const char* op, const KvCache& cache, const StepInputs& step,
                        int64_t tokens, bool history) {
  const int32_t* positions = step.positions.as<const int32_t>();
  const int32_t* sequences = step.token_sequence.as<const int32_t>();
  const int32_t* tables = step.block_tables.as<const int32_t>();
  const int64_t num_sequences = step.block_tables.dim(0);
  const int64_t max_blocks = step.block_tables.dim(1);
  const int64_t block_size = cache.block_size();
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t seq = sequences[t], pos = positions[t];
    if (seq < 0 || seq >= num_sequences || pos < 0 || pos >= max_blocks * block_size) {
      return Invalid(op, absl::StrCat("token ", t, " (sequence ", seq, ", position ", pos,
                                      ") is outside block_tables ", Describe(step.block_tables),
                                      " of ", block_size, "-token blocks"));
    }
    const int32_t* table = tables + seq * step.block_tables.strides[0];
    for (int64_t b = history ? 0 : pos / block_size; b <= pos / block_size; ++b) {
      if (table[b] < 0 || table[b] >= cache.num_blocks()) {
        return Invalid(op, absl::StrCat("block ", table[b], " of sequence ", seq,
                                        " is outside the cache's ", cache.num_blocks()));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kbitd::runtime::cpu
