#include "runtime/kernel_observer.h"

namespace kbitd::runtime {

const char* KernelKindName(KernelKind kind) {
  switch (kind) {
    case KernelKind::kQuantizedMatmul:
      return "quantized_matmul";
    case KernelKind::kDenseMatmul:
      return "dense_matmul";
    case KernelKind::kAttention:
      return "attention";
    case KernelKind::kNorm:
      return "norm";
    case KernelKind::kRope:
      return "rope";
    case KernelKind::kActivation:
      return "activation";
    case KernelKind::kEmbedding:
      return "embedding";
    case KernelKind::kSampling:
      return "sampling";
  }
  return "unknown";
}

}  // namespace kbitd::runtime
