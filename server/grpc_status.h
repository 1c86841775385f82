// absl::Status -> grpc::Status, in one place (TF Serving's ToGRPCStatus). The numeric codes are
// the same in both; messages are capped so a status never carries a whole input back.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace kbitd::server {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

// Ends a unary callback call with `status` (the default reactor), for handlers that answer inline.
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status);

}  // namespace kbitd::server
