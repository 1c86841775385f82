// Backend on one CUDA device: activations and KV cache in the model's compute dtype (bfloat16,
// float16 or float32), one non-blocking compute stream on which every op is queued in order, no
// host synchronisation inside a step (the step ends with the logits' copy to the host and
// Synchronize). Linear layers: dense weights through cuBLASLt; bitsandbytes 4-bit weights
// (NF4/FP4, with or without double quant) dequantized into device scratch in the activation dtype
// with quant/cuda's bit-exact kernels, then cuBLASLt; LLM.int8 through quant/cuda's Int8Linear one
// token at a time (as the CPU backend: bnb picks outlier columns over the rows it is given, so
// per token the result does not depend on what else is batched). The fused kernels of the speed
// issue replace the dequantize + GEMM path. Public: no CUDA headers.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime::cuda {

// The backend of device `device_index`; scratch space (dequantized weights, int8 workspace) comes
// from `pool` (that device's pool, category workspace, owner "cuda backend").
absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int device_index,
                                                        std::shared_ptr<MemoryPool> pool);

}  // namespace kbitd::runtime::cuda
