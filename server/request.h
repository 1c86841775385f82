// One Generate call as the scheduler sees it, plus its outbox: the worker emits token deltas and
// the final status; the gRPC reactor writes them one at a time (gRPC allows one write in flight),
// merging deltas that pile up while a write is in flight. Cancel flags are atomics read by the
// worker at every step. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_callback.h"
#include "kbitd/v1/inference_service.pb.h"
#include "runtime/sampling_params.h"

namespace kbitd::server {

// A validated Generate request.
struct GenerateParams {
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 0;
  runtime::SamplingParams sampling;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool logprobs = false;
  absl::Time deadline = absl::InfiniteFuture();
};

class Request : public std::enable_shared_from_this<Request> {
 public:
  using Call = grpc::ServerWriteReactor<v1::GenerateResponse>;

  Request(uint64_t id, GenerateParams params, absl::Time arrival)
      : id_(id), params_(std::move(params)), arrival_(arrival) {}

  uint64_t id() const { return id_; }
  const GenerateParams& params() const { return params_; }
  absl::Time arrival() const { return arrival_; }

  // The client went away (OnCancel, failed write): finish with CANCELLED at the next step.
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

  // Worker side (the Request must be owned by a shared_ptr). Emit merges `delta` into what the
  // client has not received yet; Finish ends the call (after the pending deltas are written).
  // Calls after Finish are ignored. The writes are started on a writer thread, not the caller's.
  void Emit(const v1::GenerateResponse& delta);
  void Finish(absl::Status status);

  // Reactor side: where to write (null detaches: OnDone ran), and write completions.
  void Attach(Call* call);
  void OnWriteDone(bool ok);

  // For the writer thread: starts the next write or the Finish, if any.
  void PumpScheduled();

 private:
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands Pump to the writer thread unless a write is in flight or already handed over.
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t id_;
  const GenerateParams params_;
  const absl::Time arrival_;
  std::atomic<bool> cancelled_{false};

  absl::Mutex mu_;
  Call* call_ ABSL_GUARDED_BY(mu_) = nullptr;
  v1::GenerateResponse pending_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  v1::GenerateResponse in_flight_ ABSL_GUARDED_BY(mu_);  // must live until OnWriteDone
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kbitd::server
