// Observer seam for kernel latencies, so the runtime never depends on the metrics library (like
// MemoryObserver in memory_pool.h). The engine times the kernels of one step in every
// Engine::Options::kernel_timing_interval with a steady clock and reports each kernel call; other
// steps are not timed at all, so the cost is a clock read per kernel on 1 step in N. The CPU
// backend's kernels are synchronous, so wall time around the call is the kernel's time; an
// asynchronous backend must synchronize its stream inside a timed step.
#pragma once

#include <chrono>

namespace kbitd::runtime {

// What a timed kernel computes (the `kind` label of kbitd_kernel_duration_seconds).
enum class KernelKind {
  kQuantizedMatmul = 0,  // Linear on a 4-bit or LLM.int8 weight
  kDenseMatmul,          // Linear on a float weight (unquantized layers, lm_head)
  kAttention,            // KV write + paged causal attention of one layer
  kNorm,                 // RMSNorm
  kRope,                 // rotary position embedding of q and k
  kActivation,           // SwiGLU: silu(gate) * up
  kEmbedding,            // token embedding lookup
  kSampling,             // logits -> tokens for every sequence of the step
};
inline constexpr int kNumKernelKinds = 8;
// "quantized_matmul", "dense_matmul", "attention", "norm", "rope", "activation", "embedding",
// "sampling".
const char* KernelKindName(KernelKind kind);

// Called on the engine's thread, right after the kernel returns. Implementations must be cheap
// and thread-safe (engines of several models report to one metrics registry).
class KernelObserver {
 public:
  virtual ~KernelObserver() = default;
  virtual void OnKernel(KernelKind kind, double seconds) = 0;
};

// Times one kernel call when `observer` is set (a sampled step); does nothing otherwise.
class ScopedKernelTimer {
 public:
  ScopedKernelTimer(KernelObserver* observer, KernelKind kind) : observer_(observer), kind_(kind) {
    if (observer_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedKernelTimer() {
    if (observer_ == nullptr) return;
    observer_->OnKernel(
        kind_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  ScopedKernelTimer(const ScopedKernelTimer&) = delete;
  ScopedKernelTimer& operator=(const ScopedKernelTimer&) = delete;

 private:
  KernelObserver* observer_;
  KernelKind kind_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kbitd::runtime
