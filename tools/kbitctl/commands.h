// kbitctl's subcommands: each takes the channel, the call options and its positional arguments,
// prints its result to stdout and returns the gRPC status.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace kbitd::kbitctl {

struct CallOptions {
  std::string admin_token;     // sent as "authorization: Bearer <token>" when not empty
  double timeout_seconds = 0;  // 0 = no deadline
};

using Args = std::vector<std::string>;
using Command = grpc::Status (*)(const std::shared_ptr<grpc::Channel>&, const CallOptions&,
                                 const Args&);

// The command named `name`, or null.
Command FindCommand(const std::string& name);
// "NOT_FOUND", "INVALID_ARGUMENT", ...
const char* StatusCodeName(grpc::StatusCode code);
// One line per command, for --help.
std::string CommandHelp();

}  // namespace kbitd::kbitctl
