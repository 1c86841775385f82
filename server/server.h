// The assembled daemon: gRPC server (ModelService, InferenceService, grpc.health.v1 overall, per
// service and per model name, reflection, optional TLS), /metrics, model registry and device
// worker, built from a validated Config. Shutdown() drains: health goes NOT_SERVING at once, new
// calls are refused, in-flight streams get the grace period and are then cancelled.
#pragma once

#include <atomic>
#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"
#include "kbitd/v1/config.pb.h"
#include "runtime/device_set.h"
#include "server/auth.h"
#include "server/device_worker.h"
#include "server/inference_service.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/model_service.h"

namespace kbitd::server {

class Server {
 public:
  // Binds the ports and starts serving; models in the config start loading in the background.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const v1::Config& config);
  ~Server();

  int port() const { return port_; }
  int metrics_port() const { return metrics_->port(); }
  void Shutdown(absl::Duration grace);

 private:
  Server() = default;
  void OnModelState(const std::string& name, v1::ModelState state);

  std::unique_ptr<Metrics> metrics_;
  // The devices (a pool and a backend each) and their workers, made at start; the registry's
  // models live in them, so both outlive the registry (see ~Server).
  std::unique_ptr<runtime::DeviceSet> devices_;
  std::unique_ptr<DeviceWorkers> workers_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<AdminAuth> auth_;
  std::unique_ptr<ModelService> model_service_;
  std::unique_ptr<InferenceService> inference_service_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};
  std::atomic<int> preloads_left_{0};
  std::atomic<bool> preload_failed_{false};
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace kbitd::server
