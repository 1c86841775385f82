#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "runtime/model.h"

namespace kbitd::server {
namespace {

constexpr const char* kOutcomeNames[] = {"length",   "stop",    "cancelled", "deadline_exceeded",
                                         "rejected", "invalid", "error"};

// Exponential buckets from `start`, multiplied by `factor`, `count` of them.
prometheus::Histogram::BucketBoundaries Exponential(double start, double factor, int count) {
  prometheus::Histogram::BucketBoundaries bounds;
  for (int i = 0; i < count; ++i, start *= factor) bounds.push_back(start);
  return bounds;
}

}  // namespace

struct Metrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(prometheus::BuildCounter()
                     .Name("kbitd_requests_total")
                     .Help("Generate requests by model and outcome")
                     .Register(r)),
        prompt_tokens(prometheus::BuildCounter()
                          .Name("kbitd_prompt_tokens_total")
                          .Help("Prompt tokens processed")
                          .Register(r)),
        generated_tokens(prometheus::BuildCounter()
                             .Name("kbitd_generated_tokens_total")
                             .Help("Tokens generated")
                             .Register(r)),
        queue_requests(prometheus::BuildGauge()
                           .Name("kbitd_queue_requests")
                           .Help("Requests waiting in the model's queue")
                           .Register(r)),
        running_requests(prometheus::BuildGauge()
                             .Name("kbitd_running_requests")
                             .Help("Sequences in the model's running batch")
                             .Register(r)),
        kv_cache_usage(prometheus::BuildGauge()
                           .Name("kbitd_kv_cache_usage_ratio")
                           .Help("Fraction of the model's KV cache blocks in use")
                           .Register(r)),
        queue_seconds(prometheus::BuildHistogram()
                          .Name("kbitd_queue_duration_seconds")
                          .Help("Time from arrival to joining the batch")
                          .Register(r)),
        time_to_first_token(prometheus::BuildHistogram()
                                .Name("kbitd_time_to_first_token_seconds")
                                .Help("Time from arrival to the first generated token")
                                .Register(r)),
        inter_token_latency(prometheus::BuildHistogram()
                                .Name("kbitd_inter_token_latency_seconds")
                                .Help("Time between consecutive tokens of a request")
                                .Register(r)),
        request_duration(prometheus::BuildHistogram()
                             .Name("kbitd_request_duration_seconds")
                             .Help("End-to-end time of a Generate request")
                             .Register(r)),
        step_duration(prometheus::BuildHistogram()
                          .Name("kbitd_engine_step_duration_seconds")
                          .Help("Time of one engine step (batched forward + sampling)")
                          .Register(r)),
        step_tokens(prometheus::BuildHistogram()
                        .Name("kbitd_engine_step_tokens")
                        .Help("Tokens (prefill + decode) in one engine step")
                        .Register(r)),
        kernel_duration(prometheus::BuildHistogram()
                            .Name("kbitd_kernel_duration_seconds")
                            .Help("Time of one kernel call by kind, measured on sampled engine "
                                  "steps (1 in kernel_timing_interval_steps)")
                            .Register(r)),
        scheduler_overhead(prometheus::BuildHistogram()
                               .Name("kbitd_scheduler_overhead_seconds")
                               .Help("Scheduler time per step outside the engine")
                               .Register(r)),
        load_seconds(prometheus::BuildGauge()
                         .Name("kbitd_model_load_duration_seconds")
                         .Help("Time the model's last load took")
                         .Register(r)),
        parameters(prometheus::BuildGauge()
                       .Name("kbitd_model_parameters")
                       .Help("Parameters of the model")
                       .Register(r)),
        weight_bytes(prometheus::BuildGauge()
                         .Name("kbitd_model_weight_bytes")
                         .Help("Bytes of the model's weights as loaded (quantized + statistics)")
                         .Register(r)),
        fp16_weight_bytes(prometheus::BuildGauge()
                              .Name("kbitd_model_fp16_weight_bytes")
                              .Help("Bytes the model's weights would take in fp16")
                              .Register(r)),
        saved_bytes(prometheus::BuildGauge()
                        .Name("kbitd_quantization_saved_bytes")
                        .Help("Bytes quantization saved against fp16: over the quantized linear "
                              "weights, 2 bytes per weight minus their quantized bytes (codes "
                              "and statistics); unquantized tensors count 0")
                        .Register(r)),
        bytes_per_parameter(prometheus::BuildGauge()
                                .Name("kbitd_model_weight_bytes_per_parameter")
                                .Help("Weight bytes per parameter, quantization statistics "
                                      "included (x8 = bits per parameter)")
                                .Register(r)),
        memory(prometheus::BuildGauge()
                   .Name("kbitd_memory_bytes")
                   .Help("Bytes held per device, model and category")
                   .Register(r)),
        device_memory(prometheus::BuildGauge()
                          .Name("kbitd_device_memory_bytes")
                          .Help("Bytes allocated from the device's pool")
                          .Register(r)),
        models(prometheus::BuildGauge()
                   .Name("kbitd_models")
                   .Help("Models per lifecycle state")
                   .Register(r)) {}

  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& prompt_tokens;
  prometheus::Family<prometheus::Counter>& generated_tokens;
  prometheus::Family<prometheus::Gauge>& queue_requests;
  prometheus::Family<prometheus::Gauge>& running_requests;
  prometheus::Family<prometheus::Gauge>& kv_cache_usage;
  prometheus::Family<prometheus::Histogram>& queue_seconds;
  prometheus::Family<prometheus::Histogram>& time_to_first_token;
  prometheus::Family<prometheus::Histogram>& inter_token_latency;
  prometheus::Family<prometheus::Histogram>& request_duration;
  prometheus::Family<prometheus::Histogram>& step_duration;
  prometheus::Family<prometheus::Histogram>& step_tokens;
  prometheus::Family<prometheus::Histogram>& kernel_duration;
  prometheus::Family<prometheus::Histogram>& scheduler_overhead;
  prometheus::Family<prometheus::Gauge>& load_seconds;
  prometheus::Family<prometheus::Gauge>& parameters;
  prometheus::Family<prometheus::Gauge>& weight_bytes;
  prometheus::Family<prometheus::Gauge>& fp16_weight_bytes;
  prometheus::Family<prometheus::Gauge>& saved_bytes;
  prometheus::Family<prometheus::Gauge>& bytes_per_parameter;
  prometheus::Family<prometheus::Gauge>& memory;
  prometheus::Family<prometheus::Gauge>& device_memory;
  prometheus::Family<prometheus::Gauge>& models;

  // One model's series and who holds them.
  struct ModelSeries {
    ModelMetrics metrics;
    int handles = 0;
    // (device, category) -> its kbitd_memory_bytes series, created as the pool reports them.
    std::map<std::pair<std::string, int>, prometheus::Gauge*> memory;
    // Takes every series above out of its family.
    std::vector<std::function<void()>> removers;
  };

  // Adds the series `labels` to `family`, noting in `series` how to remove it again.
  template <typename T, typename... Args>
  T* Add(ModelSeries& series, prometheus::Family<T>& family, const prometheus::Labels& labels,
         Args&&... args) {
    T* metric = &family.Add(labels, std::forward<Args>(args)...);
    series.removers.push_back([&family, metric] { family.Remove(metric); });
    return metric;
  }

  absl::Mutex mu;
  // std::map: ModelSeries never moves, so the pointers handed out stay valid.
  std::map<std::string, ModelSeries> by_model ABSL_GUARDED_BY(mu);
};

void ModelMetrics::CountRequest(RequestOutcome outcome) const {
  outcomes[static_cast<int>(outcome)]->Increment();
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {}

Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const Options& options) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  if (options.address.empty() || options.address == "off") return metrics;
  try {
    // One CivetWeb worker thread is plenty for a scrape every few seconds.
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(options.address, 1);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot serve metrics on ", options.address, ": ", e.what()));
  }
  metrics->exposer_->RegisterCollectable(metrics->registry_);
  const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
  metrics->port_ = ports.empty() ? 0 : ports.front();
  return metrics;
}

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

std::shared_ptr<ModelMetrics> Metrics::AddModel(const std::string& model) {
  Families& f = *families_;
  absl::MutexLock lock(&f.mu);
  Families::ModelSeries& series = f.by_model[model];
  if (series.handles++ > 0) return Handle(model, series.metrics);
  ModelMetrics& m = series.metrics;
  const prometheus::Labels labels = {{"model", model}};
  for (int i = 0; i < 7; ++i) {
    m.outcomes[i] = f.Add(series, f.requests, {{"model", model}, {"outcome", kOutcomeNames[i]}});
  }
  m.prompt_tokens = f.Add(series, f.prompt_tokens, labels);
  m.generated_tokens = f.Add(series, f.generated_tokens, labels);
  m.queue_requests = f.Add(series, f.queue_requests, labels);
  m.running_requests = f.Add(series, f.running_requests, labels);
  m.kv_cache_usage = f.Add(series, f.kv_cache_usage, labels);
  const auto latency = Exponential(0.001, 2, 17);  // 1 ms .. 65 s
  m.queue_seconds = f.Add(series, f.queue_seconds, labels, latency);
  m.time_to_first_token = f.Add(series, f.time_to_first_token, labels, latency);
  m.inter_token_latency = f.Add(series, f.inter_token_latency, labels, Exponential(0.0005, 2, 14));
  m.request_duration = f.Add(series, f.request_duration, labels, Exponential(0.01, 2, 15));
  m.step_duration = f.Add(series, f.step_duration, labels, Exponential(0.0001, 2, 18));
  m.step_tokens = f.Add(series, f.step_tokens, labels, Exponential(1, 2, 13));
  m.scheduler_overhead = f.Add(series, f.scheduler_overhead, labels, Exponential(0.000001, 2, 18));
  m.load_seconds = f.Add(series, f.load_seconds, labels);
  m.parameters = f.Add(series, f.parameters, labels);
  m.weight_bytes = f.Add(series, f.weight_bytes, labels);
  m.fp16_weight_bytes = f.Add(series, f.fp16_weight_bytes, labels);
  m.saved_bytes = f.Add(series, f.saved_bytes, labels);
  m.bytes_per_parameter = f.Add(series, f.bytes_per_parameter, labels);
  // Every kind is created up front so dashboards see zero rather than no series.
  const auto kernel_buckets = Exponential(0.000001, 2, 22);  // 1 us .. 2 s
  for (int k = 0; k < runtime::kNumKernelKinds; ++k) {
    m.kernels.durations[k] = f.Add(
        series, f.kernel_duration,
        {{"model", model}, {"kind", runtime::KernelKindName(static_cast<runtime::KernelKind>(k))}},
        kernel_buckets);
  }
  return Handle(model, m);
}

std::shared_ptr<ModelMetrics> Metrics::FindModel(const std::string& model) {
  absl::MutexLock lock(&families_->mu);
  auto it = families_->by_model.find(model);
  if (it == families_->by_model.end()) return nullptr;
  ++it->second.handles;
  return Handle(model, it->second.metrics);
}

std::shared_ptr<ModelMetrics> Metrics::Handle(const std::string& model, ModelMetrics& metrics) {
  return std::shared_ptr<ModelMetrics>(&metrics, [this, model](ModelMetrics*) { Release(model); });
}

void Metrics::Release(const std::string& model) {
  Families& f = *families_;
  absl::MutexLock lock(&f.mu);
  auto it = f.by_model.find(model);
  if (it == f.by_model.end() || --it->second.handles > 0) return;
  for (const auto& remove : it->second.removers) remove();
  f.by_model.erase(it);
}

void KernelMetrics::OnKernel(runtime::KernelKind kind, double seconds) {
  const int k = static_cast<int>(kind);
  if (k >= 0 && k < runtime::kNumKernelKinds && durations[k] != nullptr) {
    durations[k]->Observe(seconds);
  }
}

void ModelMetrics::SetLoaded(double seconds, const runtime::Model& model) const {
  const int64_t parameter_count = model.parameter_count();
  const int64_t weights = model.weight_bytes();
  load_seconds->Set(seconds);
  parameters->Set(static_cast<double>(parameter_count));
  weight_bytes->Set(static_cast<double>(weights));
  fp16_weight_bytes->Set(static_cast<double>(model.fp16_equivalent_bytes()));
  saved_bytes->Set(static_cast<double>(QuantizationSavedBytes(model)));
  bytes_per_parameter->Set(parameter_count > 0 ? static_cast<double>(weights) / parameter_count
                                               : 0.0);
}

int64_t QuantizationSavedBytes(const runtime::Model& model) {
  int64_t saved = 0;
  for (const std::string& name : model.LinearNames()) {
    const runtime::LinearWeight& w = *model.FindLinear(name);
    if (w.is_dense()) continue;
    saved += 2 * w.out_features * w.in_features - w.resident_bytes();
  }
  return saved;
}

void Metrics::SetModelCount(const std::string& state, int count) {
  families_->models.Add({{"state", state}}).Set(count);
}

void Metrics::OnMemoryChanged(const runtime::Device& device, const std::string& owner,
                              runtime::MemoryCategory category, int64_t owner_bytes,
                              int64_t device_bytes) {
  Families& f = *families_;
  const std::string device_name = device.ToString();
  f.device_memory.Add({{"device", device_name}}).Set(static_cast<double>(device_bytes));
  absl::MutexLock lock(&f.mu);
  auto it = f.by_model.find(owner);
  // A model frees its weights when the last request lets go of it, which may be after its series
  // left: those bytes must not bring a series back.
  if (it == f.by_model.end()) return;
  Families::ModelSeries& series = it->second;
  prometheus::Gauge*& gauge = series.memory[{device_name, static_cast<int>(category)}];
  if (gauge == nullptr) {
    gauge = f.Add(series, f.memory,
                  {{"device", device_name},
                   {"model", owner},
                   {"category", runtime::MemoryCategoryName(category)}});
  }
  gauge->Set(static_cast<double>(owner_bytes));
}

}  // namespace kbitd::server
