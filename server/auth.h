// The admin token that LoadModel, UnloadModel and ExportDequantized require, sent as gRPC
// metadata "authorization: Bearer <token>". Immutable; thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"

namespace kbitd::server {

class AdminAuth {
 public:
  // An empty token refuses every admin call unless `allow_unauthenticated` is set.
  AdminAuth(std::string token, bool allow_unauthenticated)
      : token_(std::move(token)), allow_unauthenticated_(allow_unauthenticated) {}

  // UNAUTHENTICATED when the metadata is missing or wrong, PERMISSION_DENIED when admin calls
  // are disabled (no token configured).
  absl::Status Check(const grpc::CallbackServerContext& context) const;
  // The same check on a raw "authorization" header value (null = absent).
  absl::Status CheckHeader(const std::string* authorization) const;

 private:
  std::string token_;
  bool allow_unauthenticated_;
};

}  // namespace kbitd::server
