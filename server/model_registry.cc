#include "server/model_registry.h"

#include <algorithm>
#include <iterator>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "runtime/convert/export_checkpoint.h"
#include "runtime/placement.h"
#include "runtime/quantization_config.h"
#include "server/config.h"

namespace kbitd::server {
namespace {

const char* StateName(v1::ModelState state) {
  switch (state) {
    case v1::MODEL_STATE_LOADING:
      return "loading";
    case v1::MODEL_STATE_READY:
      return "ready";
    case v1::MODEL_STATE_UNLOADING:
      return "unloading";
    case v1::MODEL_STATE_FAILED:
      return "failed";
    default:
      return "unspecified";
  }
}

absl::Status WithField(const std::string& field, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(field, ": ", std::string(status.message())));
}

// What GetModel reports about a loaded model.
void DescribeModel(const runtime::Model& model, const runtime::Engine& engine,
                   v1::ModelInfo* info) {
  info->set_architecture(model.config().architecture);
  info->set_parameter_count(model.parameter_count());
  const int64_t weights = model.weight_bytes();
  const int64_t fp16 = model.fp16_equivalent_bytes();
  info->set_weight_bytes(weights);
  info->set_fp16_weight_bytes(fp16);
  // The same definition as kbitd_quantization_saved_bytes, so the API and the metric agree.
  info->set_saved_bytes(QuantizationSavedBytes(model));
  if (model.parameter_count() > 0) {
    info->set_bits_per_parameter(8.0 * weights / model.parameter_count());
  }
  info->set_max_context_tokens(engine.max_context());
  info->set_vocab_size(static_cast<int32_t>(model.config().vocab_size));
  info->set_dtype(std::string(TorchDtypeName(model.compute_dtype())));
  info->set_kv_cache_bytes(engine.kv_cache_bytes());
  info->set_kv_cache_tokens(engine.kv_cache_tokens());
  info->clear_placement_plan();
  for (const runtime::PlacementEntry& entry : model.placement().entries) {
    v1::PlacedModule& placed = *info->add_placement_plan();
    placed.set_module(entry.module);
    placed.set_device(entry.device.ToString());
    placed.set_bytes(entry.bytes);
    placed.set_offloaded(entry.offloaded);
  }
  info->clear_memory();
  for (const runtime::DeviceMemoryUsage& usage : model.memory_usage()) {
    v1::DeviceMemory& memory = *info->add_memory();
    memory.set_device(usage.device.ToString());
    memory.set_weight_bytes(usage.bytes[static_cast<int>(runtime::MemoryCategory::kWeights)]);
    memory.set_kv_cache_bytes(usage.bytes[static_cast<int>(runtime::MemoryCategory::kKvCache)]);
    memory.set_workspace_bytes(usage.bytes[static_cast<int>(runtime::MemoryCategory::kWorkspace)]);
  }
}

int64_t HeldBytes(const v1::ModelInfo& info) {
  int64_t total = 0;
  for (const auto& m : info.memory()) {
    total += m.weight_bytes() + m.kv_cache_bytes() + m.workspace_bytes();
  }
  return total;
}

}  // namespace

absl::StatusOr<runtime::LoadOptions> ToLoadOptions(const v1::LoadModelRequest& request,
                                                   const std::string& resolved_path) {
  runtime::LoadOptions options;
  options.name = request.name();
  options.path = resolved_path;
  const v1::QuantizationConfig& q = request.quantization();
  if (q.load_in_4bit() || q.load_in_8bit()) {
    runtime::QuantizationConfig config;
    config.load_in_4bit = q.load_in_4bit();
    config.load_in_8bit = q.load_in_8bit();
    if (!q.bnb_4bit_quant_type().empty()) config.bnb_4bit_quant_type = q.bnb_4bit_quant_type();
    config.bnb_4bit_use_double_quant = q.bnb_4bit_use_double_quant();
    if (!q.bnb_4bit_compute_dtype().empty()) {
      auto dtype = ScalarTypeFromTorchName(q.bnb_4bit_compute_dtype());
      if (!dtype.ok()) return WithField("quantization.bnb_4bit_compute_dtype", dtype.status());
      config.bnb_4bit_compute_dtype = *dtype;
    }
    if (!q.bnb_4bit_quant_storage().empty()) {
      auto dtype = ScalarTypeFromTorchName(q.bnb_4bit_quant_storage());
      if (!dtype.ok()) return WithField("quantization.bnb_4bit_quant_storage", dtype.status());
      config.bnb_4bit_quant_storage = *dtype;
    }
    if (q.has_llm_int8_threshold()) config.llm_int8_threshold = q.llm_int8_threshold();
    if (q.llm_int8_skip_modules_size() > 0) {
      config.llm_int8_skip_modules.emplace(q.llm_int8_skip_modules().begin(),
                                           q.llm_int8_skip_modules().end());
    }
    config.llm_int8_enable_fp32_cpu_offload = q.llm_int8_enable_fp32_cpu_offload();
    if (absl::Status valid = runtime::ValidateQuantizationConfig(config); !valid.ok()) {
      return WithField("quantization", valid);
    }
    options.quantization = config;
  }
  const v1::PlacementConfig& p = request.placement();
  // No device_map: "auto", as the daemon serves on the GPUs when there are any (the host
  // otherwise, where "auto" places every module).
  options.placement.device_map = p.device_map().empty() ? "auto" : p.device_map();
  options.placement.explicit_map.insert(p.device_map_modules().begin(),
                                        p.device_map_modules().end());
  for (const auto& [device, size] : p.max_memory()) {
    auto bytes = runtime::ParseMemorySize(size);
    if (!bytes.ok())
      return WithField(absl::StrCat("placement.max_memory.", device), bytes.status());
    options.placement.max_memory[device] = *bytes;
  }
  if (!request.dtype().empty() && request.dtype() != "auto") {
    auto dtype = ScalarTypeFromTorchName(request.dtype());
    if (!dtype.ok() || (*dtype != ScalarType::kFloat32 && *dtype != ScalarType::kBFloat16 &&
                        *dtype != ScalarType::kFloat16)) {
      return absl::InvalidArgumentError(
          absl::StrCat("dtype: '", request.dtype(), "' is not float32, bfloat16, float16 or auto"));
    }
    options.compute_dtype = *dtype;
  }
  options.require_tokenizer = true;
  return options;
}

absl::StatusOr<runtime::Engine::Options> ToEngineOptions(const v1::LoadModelRequest& request,
                                                         runtime::Engine::Options daemon) {
  if (!request.kv_cache_bytes().empty()) {
    absl::StatusOr<int64_t> bytes = runtime::ParseMemorySize(request.kv_cache_bytes());
    if (!bytes.ok()) return WithField("kv_cache_bytes", bytes.status());
    daemon.kv_cache_bytes = *bytes;
  }
  return daemon;
}

ModelRegistry::ModelRegistry(Options options) : options_(std::move(options)) {}

ModelRegistry::~ModelRegistry() {
  std::vector<Task> threads;
  {
    absl::MutexLock lock(&mu_);
    threads.swap(threads_);
  }
  for (auto& task : threads) task.thread.join();
}

void ModelRegistry::Spawn(std::function<void()> task) {
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::thread thread([task = std::move(task), finished] {
    task();
    finished->store(true);
  });
  std::vector<Task> done;
  {
    absl::MutexLock lock(&mu_);
    auto split = std::partition(threads_.begin(), threads_.end(),
                                [](const Task& t) { return !t.finished->load(); });
    std::move(split, threads_.end(), std::back_inserter(done));
    threads_.erase(split, threads_.end());
    threads_.push_back({std::move(thread), std::move(finished)});
  }
  for (auto& t : done) t.thread.join();
}

void ModelRegistry::PublishCounts() {
  if (options_.metrics == nullptr) return;
  int counts[5] = {0, 0, 0, 0, 0};
  for (const auto& [name, entry] : entries_) ++counts[entry.info.state()];
  for (int s = v1::MODEL_STATE_LOADING; s <= v1::MODEL_STATE_FAILED; ++s) {
    options_.metrics->SetModelCount(StateName(static_cast<v1::ModelState>(s)), counts[s]);
  }
}

void ModelRegistry::SetState(const std::string& name, v1::ModelState state) {
  KBITD_LOG(Info) << "model " << name << ": " << StateName(state);
  if (options_.on_state_change) options_.on_state_change(name, state);
}

void ModelRegistry::Load(const v1::LoadModelRequest& request, LoadDone done) {
  if (absl::Status valid = ValidateModelName(request.name()); !valid.ok()) {
    return done(valid);
  }
  absl::StatusOr<std::string> path = options_.root.Resolve(request.path());
  if (!path.ok()) return done(path.status());
  if (request.dry_run()) {
    // No entry: a plan neither takes the name nor shows in List.
    return Spawn([this, request, path = *path, done = std::move(done)]() mutable {
      done(PlanLoad(request, path));
    });
  }
  std::shared_ptr<ModelMetrics> metrics;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(request.name());
    if (it != entries_.end() && it->second.info.state() != v1::MODEL_STATE_FAILED) {
      return done(absl::AlreadyExistsError(absl::StrCat("model '", request.name(), "' is already ",
                                                        StateName(it->second.info.state()),
                                                        "; unload it first")));
    }
    Entry& entry = entries_[request.name()];
    entry = Entry{};
    entry.info.set_name(request.name());
    entry.info.set_path(request.path());
    entry.info.set_state(v1::MODEL_STATE_LOADING);
    *entry.info.mutable_quantization() = request.quantization();
    *entry.info.mutable_placement() = request.placement();
    // Series are created here, for a name an admin loads, and never on the request paths.
    if (options_.metrics) metrics = entry.metrics = options_.metrics->AddModel(request.name());
    PublishCounts();
  }
  SetState(request.name(), v1::MODEL_STATE_LOADING);
  Spawn([this, request, path = *path, metrics = std::move(metrics),
         done = std::move(done)]() mutable {
    RunLoad(std::move(request), std::move(path), std::move(metrics), std::move(done));
  });
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::PlanLoad(const v1::LoadModelRequest& request,
                                                      const std::string& path) {
  auto planned = [&]() -> absl::StatusOr<runtime::LoadPlan> {
    KBITD_ASSIGN_OR_RETURN(runtime::LoadOptions load, ToLoadOptions(request, path));
    KBITD_RETURN_IF_ERROR(ToEngineOptions(request, options_.engine).status());
    load.devices = options_.devices;
    return runtime::PlanLoad(load);
  }();
  if (!planned.ok()) {
    return absl::Status(planned.status().code(),
                        absl::StrCat("planning model '", request.name(), "' from ", request.path(),
                                     ": ", planned.status().message()));
  }
  v1::ModelInfo info;
  info.set_name(request.name());
  info.set_path(request.path());
  *info.mutable_quantization() = request.quantization();
  *info.mutable_placement() = request.placement();
  info.set_architecture(planned->architecture);
  info.set_weight_bytes(planned->weight_bytes);
  info.set_dtype(std::string(TorchDtypeName(planned->compute_dtype)));
  std::map<std::string, int64_t> per_device;
  for (const runtime::PlacementEntry& entry : planned->plan.entries) {
    v1::PlacedModule& placed = *info.add_placement_plan();
    placed.set_module(entry.module);
    placed.set_device(entry.device.ToString());
    placed.set_bytes(entry.bytes);
    placed.set_offloaded(entry.offloaded);
    // Offloaded modules live on the host (PlacementEntry); count them where they live.
    per_device[entry.offloaded ? "cpu" : entry.device.ToString()] += entry.bytes;
  }
  for (const auto& [device, bytes] : per_device) {
    v1::DeviceMemory& memory = *info.add_memory();
    memory.set_device(device);
    memory.set_weight_bytes(bytes);
  }
  return info;
}

void ModelRegistry::RunLoad(v1::LoadModelRequest request, std::string path,
                            std::shared_ptr<ModelMetrics> metrics, LoadDone done) {
  const absl::Time start = options_.clock->Now();
  auto served = [&]() -> absl::StatusOr<std::shared_ptr<ServedModel>> {
    KBITD_ASSIGN_OR_RETURN(runtime::LoadOptions load, ToLoadOptions(request, path));
    // Parsed before the weights are read, so a typo fails at once; sized after, from what the
    // weights left free.
    KBITD_ASSIGN_OR_RETURN(runtime::Engine::Options engine_options,
                           ToEngineOptions(request, options_.engine));
    load.devices = options_.devices;
    KBITD_ASSIGN_OR_RETURN(std::shared_ptr<runtime::Model> model, runtime::LoadModel(load));
    KBITD_ASSIGN_OR_RETURN(runtime::Backend * backend,
                           options_.devices->BackendFor(model->device()));
    KBITD_ASSIGN_OR_RETURN(DeviceWorker * worker, options_.workers->For(model->device()));
    std::shared_ptr<const runtime::Tokenizer> tokenizer;
    if (model->tokenizer() != nullptr) {
      tokenizer = std::shared_ptr<const runtime::Tokenizer>(model, model->tokenizer());
    } else {
      KBITD_ASSIGN_OR_RETURN(tokenizer, runtime::Tokenizer::FromFile(path + "/tokenizer.json"));
    }
    // The scheduler below owns the engine and holds `metrics` until after the engine is gone.
    if (metrics) engine_options.kernel_observer = &metrics->kernels;
    KBITD_ASSIGN_OR_RETURN(std::unique_ptr<runtime::Engine> engine,
                           runtime::Engine::Create(model, *backend, engine_options));
    auto result = std::make_shared<ServedModel>();
    result->model = model;
    result->tokenizer = tokenizer;
    result->info.set_name(request.name());
    result->info.set_path(request.path());
    result->info.set_state(v1::MODEL_STATE_READY);
    *result->info.mutable_quantization() = request.quantization();
    *result->info.mutable_placement() = request.placement();
    DescribeModel(*model, *engine, &result->info);
    Scheduler::Options scheduler = options_.scheduler;
    scheduler.metrics = metrics;
    scheduler.wakeup = [worker] { worker->Wake(); };
    result->worker = worker;
    result->scheduler = std::make_shared<Scheduler>(std::move(engine), tokenizer, scheduler);
    return result;
  }();
  const double seconds = absl::ToDoubleSeconds(options_.clock->Now() - start);
  absl::StatusOr<v1::ModelInfo> reply;
  v1::ModelState state;
  {
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[request.name()];
    if (served.ok()) {
      (*served)->info.set_load_seconds(seconds);
      entry.info = (*served)->info;
      entry.served = *served;
      state = v1::MODEL_STATE_READY;
      reply = entry.info;
    } else {
      entry.info.set_state(v1::MODEL_STATE_FAILED);
      entry.info.set_error(std::string(served.status().message()));
      entry.metrics.reset();  // a failed model serves nothing to measure
      state = v1::MODEL_STATE_FAILED;
      reply = absl::Status(served.status().code(),
                           absl::StrCat("loading model '", request.name(), "' from ",
                                        request.path(), ": ", served.status().message()));
    }
    PublishCounts();
  }
  if (served.ok()) {
    (*served)->worker->Add((*served)->scheduler);
    if (metrics) metrics->SetLoaded(seconds, *(*served)->model);
  } else {
    KBITD_LOG(Warning) << reply.status();
  }
  // Only the registry (and requests) may hold the model once it is reported: an unload that
  // follows the reply at once must free it, not leave it to whenever this thread ends.
  if (served.ok()) served->reset();
  SetState(request.name(), state);
  done(std::move(reply));
}

void ModelRegistry::Unload(const std::string& name, UnloadDone done) {
  std::shared_ptr<ServedModel> served;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return done(absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded")));
    }
    switch (it->second.info.state()) {
      case v1::MODEL_STATE_FAILED:
        entries_.erase(it);
        PublishCounts();
        return done(v1::UnloadModelResponse());
      case v1::MODEL_STATE_READY:
        break;
      default:
        return done(absl::FailedPreconditionError(absl::StrCat(
            "model '", name, "' is ", StateName(it->second.info.state()), "; try again later")));
    }
    it->second.info.set_state(v1::MODEL_STATE_UNLOADING);
    served = it->second.served;
    PublishCounts();
  }
  served->scheduler->StopAdmitting();
  SetState(name, v1::MODEL_STATE_UNLOADING);
  // Moved, not copied: this thread must not hold the model while the unload reports it freed.
  Spawn([this, name, served = std::move(served), done = std::move(done)]() mutable {
    // The model is gone but the daemon is not: a stream that outlasts the grace ends normally,
    // with FINISH_REASON_CANCELLED and its usage.
    RunUnload(name, std::move(served), options_.unload_grace, absl::OkStatus(), std::move(done));
  });
}

void ModelRegistry::RunUnload(std::string name, std::shared_ptr<ServedModel> served,
                              absl::Duration grace, absl::Status abort, UnloadDone done) {
  v1::UnloadModelResponse response;
  response.set_freed_bytes(HeldBytes(served->info));
  const absl::Time deadline = absl::Now() + grace;
  Scheduler& scheduler = *served->scheduler;
  if (!scheduler.WaitIdle(grace)) {
    response.set_cancelled_requests(scheduler.AbortAll(std::move(abort)));
    // Aborted requests leave at the next step; bound the wait in case the engine hangs.
    scheduler.WaitIdle(absl::Seconds(60));
  }
  WaitForExports(name, deadline);
  served->worker->Remove(&scheduler);
  {
    absl::MutexLock lock(&mu_);
    entries_.erase(name);  // its series go once the scheduler (held by `served`) goes too
    PublishCounts();
  }
  served.reset();  // in-flight calls may still hold it until their last write
  SetState(name, v1::MODEL_STATE_UNSPECIFIED);
  done(std::move(response));
}

void ModelRegistry::Export(const std::string& name, const std::string& output_path,
                           std::optional<ScalarType> dtype, ExportDone done) {
  std::shared_ptr<ServedModel> served;
  std::shared_ptr<std::atomic<bool>> cancel;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return done(absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded")));
    }
    if (it->second.info.state() != v1::MODEL_STATE_READY) {
      return done(absl::FailedPreconditionError(absl::StrCat(
          "model '", name, "' is ", StateName(it->second.info.state()), ", not ready")));
    }
    served = it->second.served;
    cancel = it->second.cancel_exports;
  }
  absl::StatusOr<std::string> path = options_.root.ResolveNew(output_path);
  if (!path.ok()) return done(path.status());
  {
    // Counted only now, after the checks above; the model may have started unloading since,
    // which then waits for this export like for any other.
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second.served != served) {
      return done(absl::FailedPreconditionError(absl::StrCat("model '", name, "' was unloaded")));
    }
    ++it->second.exports;
  }
  Spawn([this, name, served = std::move(served), path = *std::move(path), dtype,
         cancel = std::move(cancel), done = std::move(done)]() mutable {
    RunExport(std::move(name), std::move(served), std::move(path), dtype, std::move(cancel),
              std::move(done));
  });
}

void ModelRegistry::RunExport(std::string name, std::shared_ptr<ServedModel> served,
                              std::string output_path, std::optional<ScalarType> dtype,
                              std::shared_ptr<std::atomic<bool>> cancel, ExportDone done) {
  auto summary = [&]() -> absl::StatusOr<runtime::ConvertSummary> {
    // The source folder holds config.json and the tokenizer files the export carries over.
    KBITD_ASSIGN_OR_RETURN(std::string source, options_.root.Resolve(served->info.path()));
    runtime::ExportCheckpointOptions options;
    options.dtype = dtype;
    options.progress = [&cancel](const runtime::ConvertProgress&) { return !cancel->load(); };
    return runtime::ExportCheckpoint(*served->model, source, output_path, options);
  }();
  if (summary.ok()) {
    KBITD_LOG(Info) << "model " << name << ": exported " << summary->converted + summary->copied
                    << " tensors to " << output_path;
  } else {
    KBITD_LOG(Warning) << "model " << name << ": export to " << output_path
                       << " failed: " << summary.status();
  }
  served.reset();
  {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(name); it != entries_.end()) --it->second.exports;
  }
  done(std::move(summary));
}

void ModelRegistry::WaitForExports(const std::string& name, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  Entry& entry = it->second;
  auto idle = [&entry] { return entry.exports == 0; };
  if (!mu_.AwaitWithDeadline(absl::Condition(&idle), deadline)) {
    entry.cancel_exports->store(true);
    mu_.Await(absl::Condition(&idle));
  }
}

void ModelRegistry::UnloadAll(absl::Duration grace) {
  std::vector<std::pair<std::string, std::shared_ptr<ServedModel>>> ready;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, entry] : entries_) {
      if (entry.info.state() == v1::MODEL_STATE_READY) {
        entry.info.set_state(v1::MODEL_STATE_UNLOADING);
        ready.emplace_back(name, entry.served);
      }
    }
  }
  for (auto& [name, served] : ready) served->scheduler->StopAdmitting();
  const absl::Time deadline = absl::Now() + grace;
  // UNAVAILABLE rather than a normal ending: the request may well succeed on another replica or
  // after the restart (gRPC's meaning of UNAVAILABLE; clients and proxies retry it), and the
  // text it got so far is not a finished generation.
  const absl::Status shutting_down =
      absl::UnavailableError("the daemon is shutting down; retry the request");
  for (auto& [name, served] : ready) {
    RunUnload(name, served, std::max(absl::ZeroDuration(), deadline - absl::Now()), shutting_down,
              [](absl::StatusOr<v1::UnloadModelResponse>) {});
  }
}

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded"));
  }
  const v1::ModelInfo& info = it->second.info;
  switch (info.state()) {
    case v1::MODEL_STATE_READY:
      return it->second.served;
    case v1::MODEL_STATE_FAILED:
      return absl::FailedPreconditionError(
          absl::StrCat("model '", name, "' failed to load: ", info.error()));
    default:
      return absl::UnavailableError(
          absl::StrCat("model '", name, "' is ", StateName(info.state())));
  }
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Info(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded"));
  }
  v1::ModelInfo info = it->second.info;
  if (it->second.served) {
    // Memory moves with the KV cache; report it as of now.
    const ServedModel& served = *it->second.served;
    const v1::ModelState state = info.state();
    DescribeModel(*served.model, served.scheduler->engine(), &info);
    info.set_state(state);
  }
  return info;
}

std::vector<v1::ModelInfo> ModelRegistry::List() const {
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) names.push_back(name);
  }
  std::vector<v1::ModelInfo> infos;
  for (const auto& name : names) {
    if (auto info = Info(name); info.ok()) infos.push_back(*std::move(info));
  }
  return infos;
}

}  // namespace kbitd::server
