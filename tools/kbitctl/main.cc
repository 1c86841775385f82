// kbitctl: a command-line client for kbitd. Examples:
//   kbitctl --address localhost:50051 list
//   kbitctl --admin_token $TOKEN --load_in_4bit --bnb_4bit_quant_type nf4 load tiny default
//   kbitctl generate tiny "def fibonacci(n):" --max_new_tokens 64 --temperature 0
//   kbitctl --admin_token $TOKEN export tiny exports/tiny-bf16 --dtype bfloat16
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/version.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tools/kbitctl/commands.h"

ABSL_FLAG(std::string, address, "localhost:50051", "kbitd's gRPC address");
ABSL_FLAG(std::string, admin_token, "",
          "admin token for load/unload/export (default: $KBITD_ADMIN_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle: connect with TLS and verify the server");
ABSL_FLAG(double, timeout, 0, "deadline of the call in seconds (0 = none)");

int main(int argc, char** argv) {
  const std::string usage = absl::StrCat(
      "kbitctl: command-line client of kbitd: one command per gRPC method of proto/kbitd/v1\n"
      "(ModelService, InferenceService) and grpc.health.v1. Generated text streams to stdout,\n"
      "the usage line (finish reason, tokens, time to first token, tokens/s) goes to stderr.\n"
      "\n"
      "usage: kbitctl [flags] COMMAND ARGS...\n"
      "commands:\n",
      kbitd::kbitctl::CommandHelp(),
      "\n"
      "main flags:\n"
      "  --address H:P        kbitd's gRPC address (default localhost:50051)\n"
      "  --admin_token T      for load, unload, export (default: $KBITD_ADMIN_TOKEN)\n"
      "  --tls_ca FILE        connect with TLS, verifying the server against this PEM bundle\n"
      "  --timeout SECONDS    deadline of the call (default none)\n"
      "  --version            print the version and the git revision, then exit\n"
      "  --helpfull           every flag, those of each command included (--max_new_tokens,\n"
      "                       --temperature, --load_in_4bit, ...)\n"
      "\n"
      "examples:\n"
      "  kbitctl list\n"
      "  kbitctl generate default \"def fibonacci(n):\" --max_new_tokens 64 --temperature 0\n"
      "  kbitctl --admin_token $TOKEN --load_in_4bit --bnb_4bit_quant_type nf4 \\\n"
      "      load default-nf4 default\n");
  if (int status = kbitd::HandleHelpAndVersion(argc, argv, "kbitctl", usage); status >= 0) {
    return status;
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) {
    std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string name = positional[1];
  kbitd::kbitctl::Command command = kbitd::kbitctl::FindCommand(name);
  if (command == nullptr) {
    std::fprintf(stderr, "kbitctl: unknown command '%s'\n%s\n", name.c_str(),
                 absl::ProgramUsageMessage().data());
    return 2;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_tls_ca));
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(options);
  }
  kbitd::kbitctl::CallOptions options;
  options.admin_token = absl::GetFlag(FLAGS_admin_token);
  if (options.admin_token.empty() && std::getenv("KBITD_ADMIN_TOKEN") != nullptr) {
    options.admin_token = std::getenv("KBITD_ADMIN_TOKEN");
  }
  options.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_address), credentials);
  const grpc::Status status =
      command(channel, options, kbitd::kbitctl::Args(positional.begin() + 2, positional.end()));
  if (!status.ok()) {
    std::fprintf(stderr, "kbitctl %s: %s: %s\n", name.c_str(),
                 kbitd::kbitctl::StatusCodeName(status.error_code()),
                 status.error_message().c_str());
    return 1;
  }
  return 0;
}
