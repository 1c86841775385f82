// kbitd: serves k-bit quantized LLMs over gRPC. Usage: kUsage below (`kbitd --help`).
// Prints the bound ports ("kbitd: listening on HOST:PORT") and drains on SIGTERM / SIGINT.
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/version.h"
#include "server/config.h"
#include "server/server.h"

ABSL_FLAG(std::string, config, "", "kbitd.yaml to read (optional: flags alone may configure)");
ABSL_FLAG(std::string, listen_address, "", "overrides listen_address");
ABSL_FLAG(std::string, metrics_address, "", "overrides metrics_address ('off' disables)");
ABSL_FLAG(std::string, model_root, "", "overrides model_root");
ABSL_FLAG(std::string, admin_token, "", "overrides admin_token");
ABSL_FLAG(std::string, tls_cert_file, "", "overrides tls.cert_file (PEM; with --tls_key_file)");
ABSL_FLAG(std::string, tls_key_file, "", "overrides tls.key_file (PEM)");
ABSL_FLAG(std::vector<std::string>, set, {},
          "comma-separated key.path=value overrides of any config field, e.g. "
          "limits.max_queue=64,unload_grace_seconds=5");

namespace {

constexpr char kUsage[] =
    "kbitd: serves k-bit quantized LLMs (bitsandbytes NF4/FP4, 8-bit, LLM.int8()) over gRPC.\n"
    "Loads Hugging Face checkpoints and quantizes them on load, or loads pre-quantized ones; the\n"
    "API is proto/kbitd/v1 (ModelService, InferenceService, grpc.health.v1), Prometheus metrics\n"
    "are served on /metrics. With neither models nor model_root configured it serves the\n"
    "bundled model as \"default\". Drains and stops on SIGTERM or SIGINT.\n"
    "\n"
    "usage: kbitd [--config kbitd.yaml] [flags]\n"
    "\n"
    "flags (each overrides the field of kbitd.yaml, schema kbitd.v1.Config in config.proto):\n"
    "  --config FILE            kbitd.yaml to read (optional: flags alone may configure)\n"
    "  --listen_address H:P     gRPC address (default 0.0.0.0:50051; port 0 = any free port)\n"
    "  --metrics_address H:P    Prometheus /metrics address (default 0.0.0.0:9400; off = none)\n"
    "  --model_root DIR         folder that model paths are relative to\n"
    "  --admin_token TOKEN      allows the admin RPCs (load, unload, export)\n"
    "  --tls_cert_file F, --tls_key_file F   serve TLS (PEM)\n"
    "  --set K=V,...            any config field, e.g. limits.max_queue=64,log_level=debug\n"
    "  --version                print the version and the git revision, then exit\n"
    "  --helpfull               every flag, Abseil's included\n"
    "\n"
    "examples:\n"
    "  kbitd --listen_address 127.0.0.1:50051     # the bundled model, as \"default\"\n"
    "  kbitd --config kbitd.yaml --admin_token $TOKEN, with kbitd.yaml:\n"
    "      model_root: /srv/models\n"
    "      models:\n"
    "        - name: llama-nf4\n"
    "          path: llama\n"
    "          quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}\n"
    "  kbitctl generate llama-nf4 \"def fibonacci(n):\" --max_new_tokens 64\n";

int Run(int argc, char** argv) {
  if (int status = kbitd::HandleHelpAndVersion(argc, argv, "kbitd", kUsage); status >= 0) {
    return status;
  }
  absl::ParseCommandLine(argc, argv);
  kbitd::server::ConfigBuilder builder;
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    if (absl::Status status = builder.ParseYamlFile(config_path); !status.ok()) {
      std::fprintf(stderr, "kbitd: %s\n", std::string(status.message()).c_str());
      return 2;
    }
  }
  std::vector<std::pair<std::string, std::string>> overrides;
  const std::pair<const char*, std::string> flag_values[] = {
      {"listen_address", absl::GetFlag(FLAGS_listen_address)},
      {"metrics_address", absl::GetFlag(FLAGS_metrics_address)},
      {"model_root", absl::GetFlag(FLAGS_model_root)},
      {"admin_token", absl::GetFlag(FLAGS_admin_token)},
      {"tls.cert_file", absl::GetFlag(FLAGS_tls_cert_file)},
      {"tls.key_file", absl::GetFlag(FLAGS_tls_key_file)},
  };
  for (const auto& [name, value] : flag_values) {
    if (!value.empty()) overrides.emplace_back(name, "'" + value + "'");
  }
  for (const std::string& item : absl::GetFlag(FLAGS_set)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    overrides.push_back(kv);
  }
  for (const auto& [key, value] : overrides) {
    if (absl::Status status = builder.Override(key, value); !status.ok()) {
      std::fprintf(stderr, "kbitd: %s\n", std::string(status.message()).c_str());
      return 2;
    }
  }
  absl::StatusOr<kbitd::v1::Config> config = std::move(builder).Build();
  if (!config.ok()) {
    std::fprintf(stderr, "kbitd: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  const std::string& level = config->log_level();
  kbitd::SetMinLogLevel(level == "debug"     ? kbitd::LogLevel::kDebug
                        : level == "warning" ? kbitd::LogLevel::kWarning
                        : level == "error"   ? kbitd::LogLevel::kError
                                             : kbitd::LogLevel::kInfo);

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<kbitd::server::Server>> server =
      kbitd::server::Server::Create(*config);
  if (!server.ok()) {
    std::fprintf(stderr, "kbitd: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const std::string host = config->listen_address().substr(0, config->listen_address().rfind(':'));
  std::printf("kbitd: listening on %s:%d\n", host.c_str(), (*server)->port());
  if ((*server)->metrics_port() > 0) {
    std::printf("kbitd: metrics on port %d\n", (*server)->metrics_port());
  }
  std::fflush(stdout);

  int signal = 0;
  sigwait(&signals, &signal);
  KBITD_LOG(Info) << "received signal " << signal;
  (*server)->Shutdown(absl::Seconds(config->shutdown_grace_seconds()));
  server->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
