// absl::Status -> grpc::Status, in one place (TF Serving's ToGRPCStatus). The numeric codes are
// the same in both; messages are capped so a status never carries a whole input back.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace kbitd::server {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kbitd::server
