#include "server/server.h"

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "runtime/placement.h"
#ifdef KBITD_WITH_CUDA
#include "runtime/cuda/cuda_devices.h"
#endif

namespace kbitd::server {
namespace {

constexpr char kInferenceService[] = "kbitd.v1.InferenceService";
constexpr char kModelService[] = "kbitd.v1.ModelService";

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat(what, ": ", std::string(text.status().message())));
  }
  return text;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const v1::TlsConfig& tls) {
  if (tls.cert_file().empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  KBITD_ASSIGN_OR_RETURN(std::string cert, ReadFile(tls.cert_file(), "tls.cert_file"));
  KBITD_ASSIGN_OR_RETURN(std::string key, ReadFile(tls.key_file(), "tls.key_file"));
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!tls.client_ca_file().empty()) {
    KBITD_ASSIGN_OR_RETURN(options.pem_root_certs,
                           ReadFile(tls.client_ca_file(), "tls.client_ca_file"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const v1::Config& config) {
  std::unique_ptr<Server> server(new Server());
  KBITD_ASSIGN_OR_RETURN(ModelRoot root, ModelRoot::Create(config.model_root()));
  KBITD_ASSIGN_OR_RETURN(server->metrics_, Metrics::Create({.address = config.metrics_address()}));
  std::string token = config.admin_token();
  if (!config.admin_token_file().empty()) {
    KBITD_ASSIGN_OR_RETURN(std::string text,
                           ReadFile(config.admin_token_file(), "admin_token_file"));
    token = std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin_token_file ", config.admin_token_file(), " is empty"));
    }
  }
  server->auth_ = std::make_unique<AdminAuth>(token, config.allow_unauthenticated_admin());
  runtime::DeviceSet::Options device_options;
  device_options.cpu_threads = config.num_threads();
  device_options.observer = server->metrics_.get();
#ifdef KBITD_WITH_CUDA
  device_options.accelerators = runtime::cuda::DiscoverCudaDevices;
#endif
  for (const auto& [device, size] : config.max_memory()) {
    absl::StatusOr<int64_t> bytes = runtime::ParseMemorySize(size);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_memory.", device, ": ", bytes.status().message()));
    }
    device_options.max_memory[device] = *bytes;
  }
  KBITD_ASSIGN_OR_RETURN(server->devices_, runtime::DeviceSet::Create(device_options));
  server->workers_ = std::make_unique<DeviceWorkers>(server->devices_->devices());

  const v1::LimitsConfig& limits = config.limits();
  ModelRegistry::Options options{.root = root};
  options.unload_grace = absl::Seconds(config.unload_grace_seconds());
  options.engine.kv_cache_tokens = config.kv_cache_tokens();
  if (config.kv_cache_tokens() > 0) {
    // Still honoured, since configs carry it; a token count costs a different number of bytes for
    // every model, which is what let a host run out of memory, so point at the byte size.
    KBITD_LOG(Warning) << "kv_cache_tokens is deprecated: each model without kv_cache_bytes gets "
                       << config.kv_cache_tokens()
                       << " tokens of KV cache; set models[].kv_cache_bytes (\"2GiB\") instead, "
                          "or neither for a default sized from the free memory";
  }
  options.engine.max_batch_size = limits.max_batch_size();
  if (config.kernel_timing_interval_steps() > 0) {
    options.engine.kernel_timing_interval = config.kernel_timing_interval_steps();
  }
  options.scheduler.limits = {.max_batch_tokens = limits.max_batch_tokens(),
                              .max_batch_size = limits.max_batch_size(),
                              .prefill_chunk_tokens = limits.prefill_chunk_tokens()};
  options.scheduler.max_queue = limits.max_queue();
  options.metrics = server->metrics_.get();
  options.devices = server->devices_.get();
  options.workers = server->workers_.get();
  Server* self = server.get();
  options.on_state_change = [self](const std::string& name, v1::ModelState state) {
    self->OnModelState(name, state);
  };
  server->registry_ = std::make_unique<ModelRegistry>(std::move(options));
  server->model_service_ =
      std::make_unique<ModelService>(server->registry_.get(), server->auth_.get());
  server->inference_service_ =
      std::make_unique<InferenceService>(server->registry_.get(), server->metrics_.get(), limits);
  KBITD_RETURN_IF_ERROR(server->model_service_->RegistrationStatus());
  KBITD_RETURN_IF_ERROR(server->inference_service_->RegistrationStatus());

  KBITD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                         Credentials(config.tls()));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen_address(), credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(limits.max_message_bytes());
  builder.RegisterService(server->model_service_.get());
  builder.RegisterService(server->inference_service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", config.listen_address()));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kModelService, true);
  health->SetServingStatus(kInferenceService, config.models_size() == 0);
  server->health_ = health;

  server->preloads_left_ = config.models_size();
  for (const v1::ModelConfig& model : config.models()) {
    v1::LoadModelRequest request;
    request.set_name(model.name());
    request.set_path(model.path());
    *request.mutable_quantization() = model.quantization();
    *request.mutable_placement() = model.placement();
    request.set_dtype(model.dtype());
    request.set_kv_cache_bytes(model.kv_cache_bytes());
    server->registry_->Load(request, [self](absl::StatusOr<v1::ModelInfo> info) {
      if (!info.ok()) {
        KBITD_LOG(Error) << "preloading: " << info.status();
        self->preload_failed_ = true;
      }
      // Ready once every configured model is loaded.
      if (--self->preloads_left_ == 0 && !self->preload_failed_) {
        if (auto* h = self->health_.load()) h->SetServingStatus(kInferenceService, true);
      }
    });
  }
  return server;
}

void Server::OnModelState(const std::string& name, v1::ModelState state) {
  if (auto* health = health_.load()) {
    health->SetServingStatus(name, state == v1::MODEL_STATE_READY);
  }
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  // Create() may have failed before the gRPC server or the registry existed (a missing TLS file,
  // model root or busy metrics port): then there is nothing to drain.
  if (server_ == nullptr || registry_ == nullptr) {
    if (registry_ != nullptr) registry_->UnloadAll(absl::ZeroDuration());
    return;
  }
  KBITD_LOG(Info) << "shutting down: draining for up to " << grace;
  // NOT_SERVING everywhere first, so load balancers stop sending traffic.
  if (auto* health = health_.exchange(nullptr)) health->Shutdown();
  const absl::Time deadline = absl::Now() + grace;
  // gRPC takes no new calls from now on and waits for the running ones. Its own deadline comes a
  // moment after ours: at ours the registry ends the streams still running with UNAVAILABLE and
  // a message saying why, which gRPC's cancel-all would cut off; gRPC's cancels only what is left
  // then (a client that does not read its stream).
  std::thread grpc_shutdown(
      [this, deadline] { server_->Shutdown(absl::ToChronoTime(deadline + absl::Seconds(1))); });
  registry_->UnloadAll(grace);
  grpc_shutdown.join();
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  server_.reset();
  registry_.reset();
  workers_.reset();
  devices_.reset();
}

}  // namespace kbitd::server
