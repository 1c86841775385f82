#include "server/auth.h"

#include "absl/strings/match.h"

namespace kbitd::server {
namespace {

// Compares in time independent of where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.empty() ? 1 : b.size())];
  return diff == 0 && !b.empty();
}

}  // namespace

absl::Status AdminAuth::CheckHeader(const std::string* authorization) const {
  if (token_.empty()) {
    if (allow_unauthenticated_) return absl::OkStatus();
    return absl::PermissionDeniedError(
        "admin RPCs are disabled: the daemon has no admin_token configured");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization == nullptr || !absl::StartsWith(*authorization, kBearer)) {
    return absl::UnauthenticatedError(
        "this RPC needs the admin token as metadata 'authorization: Bearer <token>'");
  }
  if (!ConstantTimeEquals(std::string_view(*authorization).substr(kBearer.size()), token_)) {
    return absl::UnauthenticatedError("wrong admin token");
  }
  return absl::OkStatus();
}

absl::Status AdminAuth::Check(const grpc::CallbackServerContext& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return CheckHeader(nullptr);
  const std::string value(it->second.data(), it->second.size());
  return CheckHeader(&value);
}

}  // namespace kbitd::server
