// Dense GEMM through cuBLASLt, loaded with dlopen rather than linked: linking libcublasLt.so into
// the daemon stopped prometheus-cpp's HTTP exposer from starting on Debian 12 (a known hazard of
// this project), and a dlopen'd library also lets a CUDA build run where cuBLASLt is missing
// until a dense matmul is asked for. Public: no CUDA headers (streams and pointers are void*).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace kbitd::runtime::cuda {

// y[m, n] = x[m, k] . w[n, k]^T (a torch Linear without bias), row-major, fp32 accumulation
// (CUBLAS_COMPUTE_32F: fp32 inputs are multiplied in full fp32, never TF32). x and w have the same
// dtype (float32, float16 or bfloat16); y has that dtype or float32.
struct GemmArgs {
  const void* x = nullptr;
  const void* w = nullptr;
  void* y = nullptr;
  ScalarType input_dtype = ScalarType::kFloat32;
  ScalarType output_dtype = ScalarType::kFloat32;
  int64_t m = 0, n = 0, k = 0;
};

// One cuBLASLt handle and its workspace for one device's stream. Not thread-safe (one per
// backend, driven by the device's worker).
class CublasLtGemm {
 public:
  // Loads libcublasLt (once per process) and creates a handle on the current device.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create();
  ~CublasLtGemm();
  // Queues the GEMM on `stream` (a cudaStream_t).
  absl::Status Run(const GemmArgs& args, void* stream);

 private:
  CublasLtGemm() = default;
  void* handle_ = nullptr;     // cublasLtHandle_t
  void* workspace_ = nullptr;  // device scratch cuBLASLt may use
  size_t workspace_bytes_ = 0;
};

}  // namespace kbitd::runtime::cuda
