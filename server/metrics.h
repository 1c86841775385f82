// Prometheus metrics of the daemon (prometheus-cpp stays in metrics.cc), served on their own
// /metrics port. Names follow https://prometheus.io/docs/practices/naming: kbitd_ prefix, base
// units in the name (_seconds, _bytes, _ratio), counters end in _total. Per-model series are
// created once per model name and never removed (Family::Add hands back the same series when a
// name is loaded again, so a removal could leave a reloaded model with dangling series); their
// gauges are zeroed at unload. Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/kernel_observer.h"
#include "runtime/memory_pool.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
class Exposer;
}  // namespace prometheus

namespace kbitd::server {

// How a Generate request ended, the `outcome` label of kbitd_requests_total.
enum class RequestOutcome {
  kLength,            // finished: max_new_tokens or context reached
  kStop,              // finished: EOS, stop string or stop token
  kCancelled,         // client cancel, unload or shutdown
  kDeadlineExceeded,  // the client's deadline passed
  kRejected,          // queue full (RESOURCE_EXHAUSTED)
  kInvalid,           // refused before queueing (bad input, unknown model)
  kError,             // engine failure
};

// kbitd_kernel_duration_seconds{model,kind} of one model: the engine's runtime::KernelObserver.
class KernelMetrics final : public runtime::KernelObserver {
 public:
  void OnKernel(runtime::KernelKind kind, double seconds) override;

  prometheus::Histogram* durations[runtime::kNumKernelKinds] = {};
};

// The series of one model; pointers into the registry, valid as long as Metrics lives.
struct ModelMetrics {
  prometheus::Counter* outcomes[7];
  prometheus::Counter* prompt_tokens;
  prometheus::Counter* generated_tokens;
  prometheus::Gauge* queue_requests;
  prometheus::Gauge* running_requests;
  prometheus::Gauge* kv_cache_usage;
  prometheus::Histogram* queue_seconds;
  prometheus::Histogram* time_to_first_token;
  prometheus::Histogram* inter_token_latency;
  prometheus::Histogram* request_duration;
  prometheus::Histogram* step_duration;
  prometheus::Histogram* step_tokens;
  prometheus::Histogram* scheduler_overhead;
  prometheus::Gauge* load_seconds;
  prometheus::Gauge* parameters;
  prometheus::Gauge* weight_bytes;
  prometheus::Gauge* fp16_weight_bytes;
  prometheus::Gauge* saved_bytes;
  prometheus::Gauge* bytes_per_parameter;
  KernelMetrics kernels;

  void CountRequest(RequestOutcome outcome) const;
};

class Metrics final : public runtime::MemoryObserver {
 public:
  struct Options {
    // "host:port" to serve /metrics on (port 0 = any free port); empty or "off" = no server.
    std::string address;
  };
  // FAILED_PRECONDITION when the metrics port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const Options& options);
  ~Metrics() override;

  // The bound /metrics port, 0 when serving is off.
  int port() const { return port_; }
  // The text exposition (format 0.0.4), as /metrics serves it.
  std::string Serialize() const;

  // The series of `model`, created on first use.
  const ModelMetrics& ForModel(const std::string& model);
  // The kernel latency observer of `model` for its engine (sampled steps only, see
  // runtime::Engine::Options::kernel_timing_interval).
  runtime::KernelObserver* KernelObserverFor(const std::string& model);
  // Sets a model's load time and weight accounting (saved bytes, bits per parameter).
  void ModelLoaded(const std::string& model, double load_seconds, int64_t parameters,
                   int64_t weight_bytes, int64_t fp16_weight_bytes);
  // Zeroes a model's gauges after it is unloaded.
  void ModelUnloaded(const std::string& model);
  // Number of models per lifecycle state (kbitd_models{state}).
  void SetModelCount(const std::string& state, int count);

  // runtime::MemoryObserver: kbitd_memory_bytes{device,model,category} and
  // kbitd_device_memory_bytes{device}.
  void OnMemoryChanged(const runtime::Device& device, const std::string& owner,
                       runtime::MemoryCategory category, int64_t owner_bytes,
                       int64_t device_bytes) override;

 private:
  struct Families;
  Metrics();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace kbitd::server
