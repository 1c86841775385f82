// Prometheus metrics of the daemon (prometheus-cpp stays in metrics.cc), served on their own
// /metrics port. Names follow https://prometheus.io/docs/practices/naming: kbitd_ prefix, base
// units in the name (_seconds, _bytes, _ratio), counters end in _total. Per-model series exist
// only for models an admin loads, and leave /metrics with the model (see Metrics::AddModel):
// request paths never create them, since a request may name any model. Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/kernel_observer.h"
#include "runtime/memory_pool.h"

namespace kbitd::runtime {
class Model;
}  // namespace kbitd::runtime

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

// The series of one model; pointers into the registry, valid while a handle from
// Metrics::AddModel or FindModel is held.
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
  // Sets the model's load time and weight accounting (sizes, saved bytes, bytes per parameter).
  void SetLoaded(double load_seconds, const runtime::Model& model) const;
};

// kbitd_quantization_saved_bytes: over the linear weights that are quantized, 2 bytes per weight
// (fp16) minus the bytes they take quantized (codes and statistics). Tensors left unquantized
// count 0 whatever their dtype, so an unquantized model reads 0 rather than the fp32 norms'
// excess over fp16.
int64_t QuantizationSavedBytes(const runtime::Model& model);

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

  // A handle to the series of `model`: they are created with the first handle and leave
  // /metrics when the last one is released. The registry holds one from the start of a load to
  // the end of its unload, and the model's scheduler holds one, so a request still finishing after
  // the unload writes to live series. A model loaded again under the name while handles of the
  // old one live shares its series. Handles must not outlive this Metrics.
  std::shared_ptr<ModelMetrics> AddModel(const std::string& model);
  // A handle to the series of `model` if it has any, else null; never creates series, so the
  // request paths use it.
  std::shared_ptr<ModelMetrics> FindModel(const std::string& model);
  // Number of models per lifecycle state (kbitd_models{state}).
  void SetModelCount(const std::string& state, int count);

  // runtime::MemoryObserver: kbitd_memory_bytes{device,model,category} (for models with series
  // only) and kbitd_device_memory_bytes{device}.
  void OnMemoryChanged(const runtime::Device& device, const std::string& owner,
                       runtime::MemoryCategory category, int64_t owner_bytes,
                       int64_t device_bytes) override;

 private:
  struct Families;
  Metrics();
  // A shared_ptr to `metrics` whose release drops one of the handles counted for `model`.
  std::shared_ptr<ModelMetrics> Handle(const std::string& model, ModelMetrics& metrics);
  // Drops a handle of `model`; the last one removes its series.
  void Release(const std::string& model);

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace kbitd::server
