// Internal to quant/cuda (includes the CUDA runtime header; public headers must not): the one place
// where a cudaError_t becomes an absl::Status, and the launch check every kernel launch goes
// through.
#pragma once

#include <cuda_runtime_api.h>

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"

namespace kbitd::quant::cuda {

// OK for cudaSuccess. Otherwise: out-of-memory -> RESOURCE_EXHAUSTED, bad arguments ->
// INVALID_ARGUMENT, no device / no driver -> FAILED_PRECONDITION, errors that leave the context
// unusable (illegal address, launch failure, ECC, ...) -> UNAVAILABLE (the device must be taken out
// of service), anything else -> INTERNAL. The message names `what`, the error name and its text.
absl::Status CudaStatus(cudaError_t error, std::string_view what);

// After a kernel launch: picks up launch-configuration errors (cudaGetLastError) for `kernel`.
absl::Status LaunchStatus(std::string_view kernel);

// Multiprocessor count of the current device (sizes grid-stride launches).
absl::StatusOr<int> MultiprocessorCount();

inline cudaStream_t AsCudaStream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace kbitd::quant::cuda

// Evaluates a CUDA runtime call and returns its status from the enclosing function on failure.
#define KBITD_CUDA_RETURN_IF_ERROR(call) \
  KBITD_RETURN_IF_ERROR(::kbitd::quant::cuda::CudaStatus((call), #call))
