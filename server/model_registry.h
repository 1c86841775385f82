// Name -> served model, with the lifecycle of each (TF Serving's LoaderHarness, Triton's model
// repository manager). States and their legal transitions (kbitd.v1.ModelState):
//   (absent) -> LOADING            Load of a new name (or of a FAILED one, which it replaces)
//   LOADING  -> READY | FAILED     the load finished; a failed load has freed all it took
//   READY    -> UNLOADING          Unload: no new requests; in-flight ones get the grace period,
//                                  then are cancelled
//   UNLOADING -> (absent)          once the last in-flight request has finished
//   FAILED   -> (absent)           Unload of a failed name
// Requests hold a std::shared_ptr<ServedModel>, so the model's memory is freed when the last of
// them ends. Exports of a READY model hold it too, and an unload waits for them (for the grace
// period, then cancels them) before the model leaves. Loads and unloads run on their own threads
// and report through callbacks, so gRPC handlers never block. Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "kbitd/v1/model_service.pb.h"
#include "runtime/convert/convert_progress.h"
#include "runtime/device_set.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "runtime/model.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/device_worker.h"
#include "server/metrics.h"
#include "server/model_root.h"
#include "server/scheduler.h"

namespace kbitd::server {

// A READY model: the runtime model, its scheduler and what GetModel reports. Immutable.
struct ServedModel {
  v1::ModelInfo info;  // state READY, filled at load
  std::shared_ptr<const runtime::Model> model;
  // The model's tokenizer, or one read from the checkpoint's tokenizer.json when the loader
  // attached none.
  std::shared_ptr<const runtime::Tokenizer> tokenizer;
  std::shared_ptr<Scheduler> scheduler;
  DeviceWorker* worker = nullptr;  // the worker stepping `scheduler` (its model's device)
};

class ModelRegistry {
 public:
  struct Options {
    ModelRoot root;
    absl::Duration unload_grace = absl::Seconds(30);
    runtime::Engine::Options engine;  // kernel_observer is filled per model from `metrics`
    Scheduler::Options scheduler;     // metrics is filled per model
    Metrics* metrics = nullptr;       // not owned; may be null; outlives the registry's models
    // Not owned; required; both outlive the registry. Models load into `devices` and run on the
    // worker of their device.
    const runtime::DeviceSet* devices = nullptr;
    const DeviceWorkers* workers = nullptr;
    Clock* clock = &Clock::Real();  // not owned
    // Called (from any thread, without the registry's lock) after every state change.
    std::function<void(const std::string& name, v1::ModelState state)> on_state_change;
  };
  using LoadDone = std::function<void(absl::StatusOr<v1::ModelInfo>)>;
  using UnloadDone = std::function<void(absl::StatusOr<v1::UnloadModelResponse>)>;
  using ExportDone = std::function<void(absl::StatusOr<runtime::ConvertSummary>)>;

  explicit ModelRegistry(Options options);
  ~ModelRegistry();  // waits for loads and unloads in progress

  // Starts loading; `done` runs on the loader thread with the READY info or the error.
  // Errors found before loading (bad name, path outside the root, name taken) are returned by
  // `done` too, on the caller's thread.
  void Load(const v1::LoadModelRequest& request, LoadDone done);
  void Unload(const std::string& name, UnloadDone done);
  // Writes a plain checkpoint of the READY model `name` to `output_path` (relative to the root;
  // a new folder) on a registry thread, see runtime/convert/export_checkpoint.h; `dtype` nullopt =
  // the model's original dtype. `done` gets the summary or the error: NOT_FOUND (unknown model),
  // FAILED_PRECONDITION (not READY), the root's path errors (INVALID_ARGUMENT,
  // PERMISSION_DENIED, NOT_FOUND for a missing parent, ALREADY_EXISTS), CANCELLED when an unload
  // outlasted the grace period. Errors found before starting run `done` on the caller's thread.
  void Export(const std::string& name, const std::string& output_path,
              std::optional<ScalarType> dtype, ExportDone done);

  // A READY model. NOT_FOUND (unknown), UNAVAILABLE (loading / unloading), FAILED_PRECONDITION
  // (failed load, with its reason).
  absl::StatusOr<std::shared_ptr<ServedModel>> Get(const std::string& name) const;
  absl::StatusOr<v1::ModelInfo> Info(const std::string& name) const;
  std::vector<v1::ModelInfo> List() const;
  // Unloads everything (shutdown): stop admitting, grace period, then the requests still in
  // flight end with UNAVAILABLE (see kbitd.v1.InferenceService.Generate); blocks.
  void UnloadAll(absl::Duration grace);

  const ModelRoot& root() const { return options_.root; }

 private:
  struct Entry {
    v1::ModelInfo info;                   // state + error while not READY
    std::shared_ptr<ServedModel> served;  // set while READY / UNLOADING
    int exports = 0;                      // exports in progress
    // The model's series, held from the start of the load to the end of the unload (null when
    // metrics are off or the load failed).
    std::shared_ptr<ModelMetrics> metrics;
    // Set by an unload whose grace period ran out; exports stop at their next tensor.
    std::shared_ptr<std::atomic<bool>> cancel_exports = std::make_shared<std::atomic<bool>>(false);
  };
  void SetState(const std::string& name, v1::ModelState state);
  // LoadModelRequest.dry_run: the plan as a ModelInfo, nothing loaded or registered.
  absl::StatusOr<v1::ModelInfo> PlanLoad(const v1::LoadModelRequest& request,
                                         const std::string& path);
  void RunLoad(v1::LoadModelRequest request, std::string path,
               std::shared_ptr<ModelMetrics> metrics, LoadDone done);
  // `abort`: how requests still in flight after `grace` end (Scheduler::AbortAll).
  void RunUnload(std::string name, std::shared_ptr<ServedModel> served, absl::Duration grace,
                 absl::Status abort, UnloadDone done);
  void RunExport(std::string name, std::shared_ptr<ServedModel> served, std::string output_path,
                 std::optional<ScalarType> dtype, std::shared_ptr<std::atomic<bool>> cancel,
                 ExportDone done);
  // Blocks until `name` has no export in progress; cancels them at `deadline`.
  void WaitForExports(const std::string& name, absl::Time deadline);
  void Spawn(std::function<void()> task);
  void PublishCounts() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // Load and unload threads; finished ones are joined when the next one starts.
  struct Task {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<Task> threads_ ABSL_GUARDED_BY(mu_);
};

// transformers-named request fields -> the runtime's load options. INVALID_ARGUMENT naming the
// field for bad values.
absl::StatusOr<runtime::LoadOptions> ToLoadOptions(const v1::LoadModelRequest& request,
                                                   const std::string& resolved_path);

// The daemon's engine options with the request's own: kv_cache_bytes, which wins over the
// daemon's kv_cache_tokens (INVALID_ARGUMENT naming the field when it is not a memory size).
absl::StatusOr<runtime::Engine::Options> ToEngineOptions(const v1::LoadModelRequest& request,
                                                         runtime::Engine::Options daemon);

}  // namespace kbitd::server
