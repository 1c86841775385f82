#include "runtime/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/double_quant.h"
#include "quant/cuda/int8_matmul.h"
#include "quant/cuda/int8_rowwise.h"
#include "runtime/cuda/cublaslt.h"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/four_bit_linear.h"
#include "runtime/quantize_op_checks.h"

namespace kbitd::runtime::cuda {
namespace {

using quant::cuda::CudaStatus;

const char* kScratchOwner = "cuda backend";

// Batches the fused 4-bit kernel takes, in passes of kFourBitLinearMaxRows rows. On an H100 one
// pass over Llama-3-8B's linears took 4.6 ms at 16 rows and dequantize + cuBLAS 11.9 ms, so two
// passes win; four would not.
constexpr int64_t kFusedFourBitMaxRows = 2 * kFourBitLinearMaxRows;

bool IsFloat(ScalarType dtype) {
  return dtype == ScalarType::kFloat32 || dtype == ScalarType::kFloat16 ||
         dtype == ScalarType::kBFloat16;
}

std::string Describe(const Tensor& t) {
  std::string dims;
  for (int i = 0; i < t.rank; ++i) absl::StrAppend(&dims, i ? ", " : "", t.shape[i]);
  return absl::StrCat(t.defined() ? std::string(TorchDtypeName(t.dtype)) : "undefined", " [", dims,
                      "] on ", t.device.ToString());
}

class CudaBackend : public Backend {
 public:
  CudaBackend(int index, std::shared_ptr<MemoryPool> pool)
      : device_(Device::Cuda(index)), index_(index), pool_(std::move(pool)) {}

  ~CudaBackend() override {
    if (stream_ != nullptr) {
      cudaSetDevice(index_);
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  absl::Status Init() {
    KBITD_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(index_), "cudaSetDevice"));
    KBITD_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"));
    KBITD_ASSIGN_OR_RETURN(gemm_, CublasLtGemm::Create());
    // bitsandbytes' nested code (the dynamic map) on the device, for double-quant weights.
    const auto& map = quant::DynamicMap();
    KBITD_ASSIGN_OR_RETURN(
        dynamic_map_,
        pool_->Allocate(map.size() * sizeof(float), MemoryCategory::kWorkspace, kScratchOwner));
    KBITD_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(dynamic_map_.data(), map.data(), map.size() * sizeof(float), cudaMemcpyDefault),
        "dynamic map upload"));
    KBITD_ASSIGN_OR_RETURN(
        error_flags_buffer_,
        pool_->Allocate(sizeof(int32_t), MemoryCategory::kWorkspace, kScratchOwner));
    error_flags_ = error_flags_buffer_.as<int32_t>();
    return CudaStatus(cudaMemset(error_flags_, 0, sizeof(int32_t)), "error flags");
  }

  const Device& device() const override { return device_; }
  ScalarType ActivationDtype(ScalarType compute_dtype) const override { return compute_dtype; }
  ScalarType KvCacheDtype(ScalarType compute_dtype) const override { return compute_dtype; }

  absl::Status Embedding(const Tensor& table, const Tensor& tokens, Tensor out) override {
    KBITD_RETURN_IF_ERROR(OnDevice("Embedding", {&table, &tokens, &out}));
    if (table.rank != 2 || out.rank != 2 || table.dim(1) != out.dim(1) || !IsFloat(table.dtype) ||
        tokens.dtype != ScalarType::kInt32 || tokens.numel() != out.dim(0)) {
      return Mismatch("Embedding", {&table, &tokens, &out});
    }
    flags_pending_ = true;
    return LaunchEmbedding(table.data, table.dtype, table.dim(0), tokens.as<const int32_t>(),
                           out.dim(0), out.dim(1), out.data, out.dtype, error_flags_, stream_);
  }

  absl::Status Linear(const LinearWeight& w, const Tensor& x, Tensor y) override {
    KBITD_RETURN_IF_ERROR(OnDevice("Linear", {&x, &y}));
    KBITD_RETURN_IF_ERROR(CheckLinearWeight(absl::StrCat("Linear ", w.name), w, device_));
    if (x.rank != 2 || y.rank != 2 || x.dim(1) != w.in_features || y.dim(1) != w.out_features ||
        x.dim(0) != y.dim(0) || !IsFloat(x.dtype) ||
        (y.dtype != x.dtype && y.dtype != ScalarType::kFloat32)) {
      return absl::InvalidArgumentError(absl::StrCat("Linear ", w.name, ": x ", Describe(x),
                                                     " / y ", Describe(y), " do not fit weight [",
                                                     w.out_features, ", ", w.in_features, "]"));
    }
    if (x.dim(0) == 0) return absl::OkStatus();
    KBITD_RETURN_IF_ERROR(Activate());
    if (!w.is_dense() && *w.quant_type == quant::QuantType::kInt8Rowwise) {
      return Int8Linear(w, x, y);
    }
    if (w.is_gptq()) {
      return absl::UnimplementedError(
          absl::StrCat("Linear ", w.name,
                       ": GPTQ weights are not served on CUDA yet; load with device_map cpu"));
    }
    if (std::optional<FourBitLinearWeight> fused = FusedFourBit(w, x, y)) {
      // Up to two passes of 16 rows: reading the weights twice still beats dequantizing them.
      const int64_t rows = x.dim(0), step = kFourBitLinearMaxRows;
      for (int64_t r = 0; r < rows; r += step) {
        KBITD_RETURN_IF_ERROR(LaunchFourBitLinear(
            *fused, x.as<const char>() + r * x.dim(1) * ScalarTypeSize(x.dtype),
            std::min(step, rows - r), x.dtype,
            y.as<char>() + r * y.dim(1) * ScalarTypeSize(y.dtype), y.dtype, stream_));
      }
      if (!w.bias.defined()) return absl::OkStatus();
      return LaunchAddBias(y.data, w.bias.as<const float>(), y.dim(0), y.dim(1), y.dtype, stream_);
    }
    KBITD_ASSIGN_OR_RETURN(const void* weight, WeightIn(w, x.dtype));
    KBITD_RETURN_IF_ERROR(gemm_->Run({.x = x.data,
                                      .w = weight,
                                      .y = y.data,
                                      .input_dtype = x.dtype,
                                      .output_dtype = y.dtype,
                                      .m = x.dim(0),
                                      .n = w.out_features,
                                      .k = w.in_features},
                                     stream_));
    if (!w.bias.defined()) return absl::OkStatus();
    return LaunchAddBias(y.data, w.bias.as<const float>(), y.dim(0), y.dim(1), y.dtype, stream_);
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor y) override {
    KBITD_RETURN_IF_ERROR(OnDevice("RmsNorm", {&x, &weight, &y}));
    if (x.rank != 2 || y.rank != 2 || x.dtype != y.dtype || x.dim(0) != y.dim(0) ||
        x.dim(1) != y.dim(1) || weight.dtype != ScalarType::kFloat32 ||
        weight.numel() != x.dim(1)) {
      return Mismatch("RmsNorm", {&x, &weight, &y});
    }
    return LaunchRmsNorm(x.data, weight.as<const float>(), eps, x.dim(0), x.dim(1), y.data, x.dtype,
                         stream_);
  }

  absl::Status Rope(Tensor q, Tensor k, int64_t head_dim, const Tensor& positions,
                    const Tensor& inv_freq) override {
    KBITD_RETURN_IF_ERROR(OnDevice("Rope", {&q, &k, &positions, &inv_freq}));
    if (q.rank != 2 || k.rank != 2 || q.dtype != k.dtype || q.dim(0) != k.dim(0) || head_dim <= 0 ||
        head_dim % 2 != 0 || q.dim(1) % head_dim != 0 || k.dim(1) % head_dim != 0 ||
        positions.dtype != ScalarType::kInt32 || positions.numel() != q.dim(0) ||
        inv_freq.dtype != ScalarType::kFloat32 || inv_freq.numel() != head_dim / 2) {
      return Mismatch("Rope", {&q, &k, &positions, &inv_freq});
    }
    return LaunchRope(q.data, q.dim(1), k.data, k.dim(1), q.dim(0), head_dim,
                      positions.as<const int32_t>(), inv_freq.as<const float>(), q.dtype, stream_);
  }

  absl::Status WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                       const StepInputs& step) override {
    KBITD_RETURN_IF_ERROR(OnDevice("WriteKv", {&k, &v}));
    KBITD_ASSIGN_OR_RETURN(PagedKv kv, Paged("WriteKv", cache, layer));
    KBITD_ASSIGN_OR_RETURN(StepPointers s, Step("WriteKv", step, k.dim(0)));
    const int64_t width = kv.num_kv_heads * kv.head_dim;
    if (k.rank != 2 || v.rank != 2 || k.dtype != cache.dtype() || v.dtype != cache.dtype() ||
        k.dim(1) != width || v.dim(1) != width || v.dim(0) != k.dim(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteKv: k ", Describe(k), " / v ", Describe(v), " do not fit the cache's ",
                       width, " ", std::string(TorchDtypeName(cache.dtype()))));
    }
    if (s.tokens == 0) return absl::OkStatus();
    return LaunchWriteKv(kv, s, k.data, v.data, k.dtype, stream_);
  }

  absl::Status Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                         const StepInputs& step, const AttentionShape& shape, Tensor out) override {
    KBITD_RETURN_IF_ERROR(OnDevice("Attention", {&q, &out}));
    KBITD_ASSIGN_OR_RETURN(PagedKv kv, Paged("Attention", cache, layer));
    KBITD_ASSIGN_OR_RETURN(StepPointers s, Step("Attention", step, q.dim(0)));
    const int64_t width = shape.num_heads * shape.head_dim;
    if (shape.num_kv_heads != kv.num_kv_heads || shape.head_dim != kv.head_dim ||
        shape.num_kv_heads <= 0 || shape.num_heads % shape.num_kv_heads != 0 || q.rank != 2 ||
        out.rank != 2 || q.dim(1) != width || out.dim(1) != width || out.dim(0) != q.dim(0) ||
        q.dtype != cache.dtype() || out.dtype != q.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: ", shape.num_heads, " heads of ", shape.head_dim, " over ",
                       shape.num_kv_heads, " kv heads, q ", Describe(q), ", out ", Describe(out),
                       ", cache of ", kv.num_kv_heads, " kv heads of ", kv.head_dim, " in ",
                       std::string(TorchDtypeName(cache.dtype()))));
    }
    return LaunchPagedAttention(kv, s, q.data, shape.num_heads, out.data, q.dtype, stream_);
  }

  absl::Status SiluMul(const Tensor& gate, const Tensor& up, Tensor out) override {
    KBITD_RETURN_IF_ERROR(OnDevice("SiluMul", {&gate, &up, &out}));
    if (gate.numel() != up.numel() || gate.numel() != out.numel() || gate.dtype != up.dtype ||
        gate.dtype != out.dtype) {
      return Mismatch("SiluMul", {&gate, &up, &out});
    }
    return LaunchSiluMul(gate.data, up.data, gate.numel(), out.data, gate.dtype, stream_);
  }

  absl::Status Add(Tensor x, const Tensor& y) override {
    KBITD_RETURN_IF_ERROR(OnDevice("Add", {&x, &y}));
    if (x.numel() != y.numel() || x.dtype != y.dtype) return Mismatch("Add", {&x, &y});
    return LaunchAdd(x.data, y.data, x.numel(), x.dtype, stream_);
  }

  absl::Status RoundTo(Tensor x, ScalarType dtype) override {
    KBITD_RETURN_IF_ERROR(OnDevice("RoundTo", {&x}));
    if (!IsFloat(dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("RoundTo: ", std::string(TorchDtypeName(dtype)), " is not a float dtype"));
    }
    // Activations in the compute dtype are already rounded to it.
    if (x.dtype == dtype || dtype == ScalarType::kFloat32) return absl::OkStatus();
    if (!IsFloat(x.dtype)) return Mismatch("RoundTo", {&x});
    if (x.numel() == 0) return absl::OkStatus();
    return LaunchRoundTo(x.data, x.dtype, x.numel(), dtype, stream_);
  }

  absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor out) override {
    KBITD_RETURN_IF_ERROR(OnDevice("GatherRows", {&x, &rows, &out}));
    if (x.rank != 2 || out.rank != 2 || x.dtype != out.dtype || x.dim(1) != out.dim(1) ||
        rows.dtype != ScalarType::kInt32 || rows.numel() != out.dim(0)) {
      return Mismatch("GatherRows", {&x, &rows, &out});
    }
    if (out.dim(0) == 0) return absl::OkStatus();
    flags_pending_ = true;
    return LaunchGatherRows(x.data, x.dim(0),
                            x.dim(1) * static_cast<int64_t>(ScalarTypeSize(x.dtype)),
                            rows.as<const int32_t>(), out.dim(0), out.data, error_flags_, stream_);
  }

  absl::Status GreedySample(const Tensor& logits, Tensor tokens, Tensor logprobs) override {
    KBITD_RETURN_IF_ERROR(OnDevice("GreedySample", {&logits, &tokens, &logprobs}));
    if (logits.rank != 2 || logits.dtype != ScalarType::kFloat32 ||
        tokens.dtype != ScalarType::kInt32 || tokens.numel() != logits.dim(0) ||
        logprobs.dtype != ScalarType::kFloat32 || logprobs.numel() != logits.dim(0) ||
        (logits.dim(0) > 0 && logits.dim(1) == 0)) {
      return Mismatch("GreedySample", {&logits, &tokens, &logprobs});
    }
    return LaunchGreedySample(logits.as<const float>(), logits.dim(0), logits.dim(1),
                              tokens.as<int32_t>(), logprobs.as<float>(), stream_);
  }

  absl::Status Quantize4bit(quant::FourBitType type, const Tensor& dense, int64_t blocksize,
                            Tensor packed, Tensor absmax) override {
    KBITD_RETURN_IF_ERROR(CheckQuantize4bitArgs(device_, dense, blocksize, packed, absmax));
    KBITD_RETURN_IF_ERROR(Activate());
    return quant::cuda::Quantize4bit(type, dense.data, dense.dtype, dense.numel(), blocksize,
                                     packed.as<uint8_t>(), absmax.as<float>(), stream_);
  }

  absl::Status DoubleQuantize(const Tensor& absmax, Tensor codes, Tensor nested_absmax,
                              Tensor offset) override {
    KBITD_RETURN_IF_ERROR(CheckDoubleQuantizeArgs(device_, absmax, codes, nested_absmax, offset));
    KBITD_RETURN_IF_ERROR(Activate());
    return quant::cuda::DoubleQuantizeAbsmax(
        absmax.as<const float>(), absmax.numel(), dynamic_map_.as<const float>(),
        codes.as<uint8_t>(), nested_absmax.as<float>(), offset.as<float>(), stream_);
  }

  absl::Status QuantizeRowwiseInt8(const Tensor& dense, Tensor cb, Tensor scb) override {
    KBITD_RETURN_IF_ERROR(CheckRowwiseInt8Args(device_, dense, cb, scb));
    KBITD_RETURN_IF_ERROR(Activate());
    return quant::cuda::QuantizeRowwiseInt8(dense.data, dense.dtype, dense.dim(0), dense.dim(1),
                                            cb.as<int8_t>(), scb.as<float>(), stream_);
  }

  absl::Status CopyTo(const Tensor& src, Tensor dst) override {
    for (const Tensor* t : std::initializer_list<const Tensor*>{&src, &dst}) {
      if (!t->device.is_cpu() && !(t->device == device_)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CopyTo: the ", device_.ToString(), " backend copies between the host ",
            "and its device, not ", src.device.ToString(), " -> ", dst.device.ToString()));
      }
    }
    if (src.dtype != dst.dtype || src.numel() != dst.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("CopyTo: ", Describe(src), " into ", Describe(dst)));
    }
    if (src.numel() > 0 && (!src.defined() || !dst.defined())) {
      return absl::InvalidArgumentError(
          absl::StrCat("CopyTo: ", Describe(src), " into ", Describe(dst), ": no data"));
    }
    if (src.bytes() == 0) return absl::OkStatus();
    KBITD_RETURN_IF_ERROR(Activate());
    return CudaStatus(cudaMemcpyAsync(dst.data, src.data, static_cast<size_t>(src.bytes()),
                                      cudaMemcpyDefault, stream_),
                      "CopyTo");
  }

  absl::Status Synchronize() override {
    KBITD_RETURN_IF_ERROR(Activate());
    KBITD_RETURN_IF_ERROR(
        CudaStatus(cudaStreamSynchronize(stream_), "step on " + device_.ToString()));
    if (!flags_pending_) return absl::OkStatus();
    // What the kernels found out of range since the last check (cuda_kernels.h ErrorFlag).
    flags_pending_ = false;
    int32_t flags = 0;
    KBITD_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(&flags, error_flags_, sizeof(flags), cudaMemcpyDeviceToHost), "error flags"));
    if (flags == 0) return absl::OkStatus();
    KBITD_RETURN_IF_ERROR(
        CudaStatus(cudaMemset(error_flags_, 0, sizeof(int32_t)), "error flags reset"));
    std::string ops;
    for (auto [bit, what] :
         {std::pair{kBadToken, "Embedding: a token id outside the table"},
          {kBadKvWrite, "WriteKv: a sequence, position or KV block out of range"},
          {kBadKvRead, "Attention: a sequence, position or KV block out of range"},
          {kBadGatherRow, "GatherRows: a row outside its input"}}) {
      if (flags & bit) absl::StrAppend(&ops, ops.empty() ? "" : "; ", what);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(ops, " (found on ", device_.ToString(), "; the op's output is not written)"));
  }

  absl::Status Prefetch(const LayerWeights&) override { return absl::OkStatus(); }

 private:
  absl::Status Activate() { return CudaStatus(cudaSetDevice(index_), "cudaSetDevice"); }

  absl::Status OnDevice(const char* op, std::initializer_list<const Tensor*> tensors) {
    for (const Tensor* t : tensors) {
      if (!t->defined() && t->numel() > 0) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": a tensor has no data"));
      }
      if (!(t->device == device_)) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": the ", device_.ToString(), " backend was given ", Describe(*t)));
      }
    }
    return Activate();
  }

  absl::Status Mismatch(const char* op, std::initializer_list<const Tensor*> tensors) {
    std::string message = absl::StrCat(op, ": shapes or dtypes do not fit:");
    for (const Tensor* t : tensors) absl::StrAppend(&message, " ", Describe(*t), ";");
    return absl::InvalidArgumentError(message);
  }

  absl::StatusOr<PagedKv> Paged(const char* op, const KvCache& cache, int64_t layer) {
    if (!(cache.device() == device_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": KV cache on ", cache.device().ToString(), ", not ", device_.ToString()));
    }
    if (layer < 0 || layer >= cache.num_layers()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": layer ", layer, " outside the cache's ", cache.num_layers()));
    }
    const Tensor keys = cache.keys(layer), values = cache.values(layer);
    return PagedKv{.keys = keys.data,
                   .values = values.data,
                   .num_blocks = keys.dim(0),
                   .block_size = keys.dim(1),
                   .num_kv_heads = keys.dim(2),
                   .head_dim = keys.dim(3)};
  }

  absl::StatusOr<StepPointers> Step(const char* op, const StepInputs& step, int64_t tokens) {
    KBITD_RETURN_IF_ERROR(
        OnDevice(op, {&step.positions, &step.token_sequence, &step.block_tables}));
    if (step.positions.dtype != ScalarType::kInt32 || step.positions.numel() != tokens ||
        step.token_sequence.dtype != ScalarType::kInt32 || step.token_sequence.numel() != tokens ||
        step.block_tables.rank != 2 || step.block_tables.dtype != ScalarType::kInt32) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": step inputs for ", tokens, " tokens: positions ",
                       Describe(step.positions), ", token_sequence ", Describe(step.token_sequence),
                       ", block_tables ", Describe(step.block_tables)));
    }
    flags_pending_ = true;
    return StepPointers{.positions = step.positions.as<const int32_t>(),
                        .token_sequence = step.token_sequence.as<const int32_t>(),
                        .block_tables = step.block_tables.as<const int32_t>(),
                        .sequences = step.block_tables.dim(0),
                        .max_blocks = step.block_tables.dim(1),
                        .tokens = tokens,
                        .error_flags = error_flags_};
  }

  // Device scratch of at least `bytes`, valid until the next call. Growing waits for the stream
  // first: queued kernels may still read the old scratch, which the pool may hand out again.
  absl::StatusOr<char*> Scratch(size_t bytes) {
    if (scratch_.size() < bytes) {
      KBITD_RETURN_IF_ERROR(Synchronize());
      scratch_.Reset();
      KBITD_ASSIGN_OR_RETURN(scratch_,
                             pool_->Allocate(bytes, MemoryCategory::kWorkspace, kScratchOwner));
    }
    return scratch_.as<char>();
  }

  // The weight as the fused small-batch kernel's input, when it takes this problem: 4-bit
  // bitsandbytes weights (plain or double-quantized absmax) with 16-bit activations and at most
  // kFusedFourBitMaxRows rows.
  // Everything else (fp32 activations, prefill batches) dequantizes into scratch for cuBLASLt.
  std::optional<FourBitLinearWeight> FusedFourBit(const LinearWeight& w, const Tensor& x,
                                                  const Tensor& y) const {
    if (!w.is_four_bit()) return std::nullopt;
    FourBitLinearWeight fused{.packed = w.packed.as<const uint8_t>(),
                              .n = w.out_features,
                              .k = w.in_features,
                              .blocksize = w.blocksize,
                              .code = w.code};
    if (w.nested()) {
      if (w.nested_blocksize != 256 ||
          !std::equal(w.nested_code.begin(), w.nested_code.end(), quant::DynamicMap().begin())) {
        return std::nullopt;
      }
      fused.absmax_codes = w.absmax_codes.as<const uint8_t>();
      fused.nested_absmax = w.nested_absmax.as<const float>();
      fused.nested_code = dynamic_map_.as<const float>();
      fused.nested_offset = w.nested_offset;
    } else {
      fused.absmax = w.absmax.as<const float>();
    }
    if (x.dim(0) > kFusedFourBitMaxRows ||
        !FourBitLinearFits(std::min(x.dim(0), kFourBitLinearMaxRows), fused, x.dtype, y.dtype) ||
        reinterpret_cast<uintptr_t>(x.data) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(fused.packed) % 8 != 0) {
      return std::nullopt;
    }
    return fused;
  }

  // The weight as a dense [out, in] matrix in `dtype` (the activations'): the stored tensor when
  // it already is, else converted or dequantized into scratch.
  absl::StatusOr<const void*> WeightIn(const LinearWeight& w, ScalarType dtype) {
    const int64_t n = w.out_features * w.in_features;
    const size_t weight_bytes = static_cast<size_t>(n) * ScalarTypeSize(dtype);
    if (w.is_dense()) {
      if (w.dense.dtype == dtype) return static_cast<const void*>(w.dense.data);
      KBITD_ASSIGN_OR_RETURN(char* scratch, Scratch(weight_bytes));
      KBITD_RETURN_IF_ERROR(LaunchConvert(w.dense.data, w.dense.dtype, n, scratch, dtype, stream_));
      return static_cast<const void*>(scratch);
    }
    if (!w.is_four_bit()) {
      return absl::UnimplementedError(
          absl::StrCat("Linear ", w.name, ": 8-bit blockwise weights have no matmul"));
    }
    const bool nf4 = *w.quant_type == quant::QuantType::kNf4;
    const auto& standard = nf4 ? quant::Nf4Code() : quant::Fp4Code();
    if (!std::equal(standard.begin(), standard.end(), w.code.begin())) {
      return absl::UnimplementedError(absl::StrCat(
          "Linear ", w.name, ": a 4-bit code other than bitsandbytes' ", nf4 ? "NF4" : "FP4"));
    }
    const int64_t blocks = quant::NumBlocks(n, w.blocksize);
    const size_t absmax_bytes = w.nested() ? static_cast<size_t>(blocks) * sizeof(float) : 0;
    const size_t absmax_at = (weight_bytes + 255) / 256 * 256;
    KBITD_ASSIGN_OR_RETURN(char* scratch, Scratch(absmax_at + absmax_bytes));
    const float* absmax = w.absmax.as<const float>();
    if (w.nested()) {
      if (w.nested_blocksize != 256 ||
          !std::equal(w.nested_code.begin(), w.nested_code.end(), quant::DynamicMap().begin())) {
        return absl::UnimplementedError(
            absl::StrCat("Linear ", w.name, ": double quantization other than bitsandbytes' ",
                         "(dynamic map, 256 blocks per nested block)"));
      }
      float* reconstructed = reinterpret_cast<float*>(scratch + absmax_at);
      KBITD_RETURN_IF_ERROR(quant::cuda::ReconstructAbsmax(
          w.absmax_codes.as<const uint8_t>(), w.nested_absmax.as<const float>(),
          dynamic_map_.as<const float>(), w.nested_offset, blocks, reconstructed, stream_));
      absmax = reconstructed;
    }
    KBITD_RETURN_IF_ERROR(quant::cuda::Dequantize4bit(
        nf4 ? quant::FourBitType::kNf4 : quant::FourBitType::kFp4, w.packed.as<const uint8_t>(),
        absmax, n, w.blocksize, dtype, scratch, stream_));
    return static_cast<const void*>(scratch);
  }

  absl::Status Int8Linear(const LinearWeight& w, const Tensor& x, Tensor y) {
    if (y.dtype != x.dtype) {
      return absl::UnimplementedError(absl::StrCat(
          "Linear ", w.name, ": LLM.int8 output in ", std::string(TorchDtypeName(y.dtype)),
          " from ", std::string(TorchDtypeName(x.dtype)), " activations"));
    }
    const int64_t k = w.in_features, n = w.out_features;
    const size_t element = ScalarTypeSize(x.dtype);
    const size_t workspace_bytes = (quant::cuda::Int8LinearWorkspaceBytes(1, k) + 255) / 256 * 256;
    const size_t bias_bytes = w.bias.defined() ? static_cast<size_t>(n) * element : 0;
    KBITD_ASSIGN_OR_RETURN(char* scratch, Scratch(workspace_bytes + bias_bytes));
    const void* bias = nullptr;
    if (w.bias.defined()) {
      // Int8Linear adds a bias of the activations' dtype, as bnb does.
      KBITD_RETURN_IF_ERROR(LaunchConvert(w.bias.data, ScalarType::kFloat32, n,
                                          scratch + workspace_bytes, x.dtype, stream_));
      bias = scratch + workspace_bytes;
    }
    for (int64_t t = 0; t < x.dim(0); ++t) {
      KBITD_RETURN_IF_ERROR(
          quant::cuda::Int8Linear(x.as<const char>() + t * k * element, x.dtype, 1, k,
                                  w.cb.as<const int8_t>(), w.scb.as<const float>(), n, bias,
                                  w.threshold, scratch, y.as<char>() + t * n * element, stream_));
    }
    return absl::OkStatus();
  }

  const Device device_;
  const int index_;
  std::shared_ptr<MemoryPool> pool_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CublasLtGemm> gemm_;
  Buffer dynamic_map_;
  Buffer scratch_;
  Buffer error_flags_buffer_;
  int32_t* error_flags_ = nullptr;  // device word of ErrorFlag bits
  bool flags_pending_ = false;      // a kernel that may set them ran since the last check
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int device_index,
                                                        std::shared_ptr<MemoryPool> pool) {
  auto backend = std::make_unique<CudaBackend>(device_index, std::move(pool));
  KBITD_RETURN_IF_ERROR(backend->Init());
  return backend;
}

}  // namespace kbitd::runtime::cuda
