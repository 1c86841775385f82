// Continuous batching for one model (the slot loop of llama.cpp's server, the policy split of TF
// Serving's batching): a bounded queue any thread may add to, and Step(), which the model's device
// worker calls in a loop. Each step retires cancelled and expired requests, admits queued ones
// under the KV budget (batch_policy.h), runs one Engine::Step over prefill chunks and decode tokens
// together, then streams each new token (text, logprobs) to its request and finishes those that hit
// EOS, a stop string or token, max_new_tokens or the context. Cancellation and deadlines therefore
// take effect within one step. The queue side is thread-safe; Step() and the Engine belong to the
// worker thread alone.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "runtime/engine.h"
#include "runtime/tokenizer/streaming_decoder.h"
#include "server/batch_policy.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/stop_matcher.h"

namespace kbitd::server {

class Scheduler {
 public:
  struct Options {
    BatchLimits limits;
    int32_t max_queue = 256;  // waiting requests before RESOURCE_EXHAUSTED
    // May be null. Shared: the series stay while the scheduler (on the device worker or held by
    // requests still finishing) may write to them.
    std::shared_ptr<const ModelMetrics> metrics;
    Clock* clock = &Clock::Real();  // not owned
    // Called from any thread after a successful Enqueue, outside the scheduler's lock: wakes the
    // device worker. Set at construction, before any request can arrive (may be null).
    std::function<void()> wakeup;
  };

  // `tokenizer` detokenizes the generated tokens; it must belong to the engine's model.
  Scheduler(std::unique_ptr<runtime::Engine> engine,
            std::shared_ptr<const runtime::Tokenizer> tokenizer, Options options);
  ~Scheduler();

  // Any thread. RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE once admission stopped.
  absl::Status Enqueue(std::shared_ptr<Request> request);
  // Any thread: Enqueue answers UNAVAILABLE from now on (unload, shutdown).
  void StopAdmitting();
  // Any thread: every queued and running request ends at the next step, counted as cancelled:
  // with `status` if it is an error (shutdown), else normally with FINISH_REASON_CANCELLED and
  // its usage (unload). Returns how many there were.
  int AbortAll(absl::Status status);
  // Queued + running requests.
  int InFlight() const;
  // Waits until nothing is in flight or `timeout` passes; true if idle.
  bool WaitIdle(absl::Duration timeout) const;
  bool HasWork() const;

  // Worker thread only: one scheduling iteration. Engine errors fail the running requests and are
  // returned.
  absl::Status Step();

  const runtime::Engine& engine() const { return *engine_; }

 private:
  struct Slot {
    std::shared_ptr<Request> request;
    int32_t prompt_tokens = 0;
    int32_t generated = 0;
    int32_t max_total_tokens = 0;
    StopMatcher stop;
    runtime::StreamingDecoder decoder;
    absl::Time admitted;
    absl::Time first_token = absl::InfinitePast();
    absl::Time last_token;
  };
  // Why a request leaves the batch or the queue; each maps to one RequestOutcome.
  enum class Ending { kNone, kLength, kStop, kAborted, kCancelled, kDeadlineExceeded, kFailed };
  static RequestOutcome OutcomeOf(Ending ending);

  // Moves the requests to admit into `admitted`, after ending the queued ones that have to end.
  // `abort`: how AbortAll asked requests to end, if it did since the last step.
  void TakeAdmitted(std::vector<std::shared_ptr<Request>>* admitted,
                    std::optional<absl::Status>* abort);
  void StartSlot(std::shared_ptr<Request> request, absl::Time now);
  // Whether `request` has to leave before it gets another token: kDeadlineExceeded,
  // kCancelled, kAborted (when `abort`) or kNone.
  Ending EndingBeforeStep(const Request& request, bool abort) const;
  // Finishes a slot (removes it from the engine) with `status` and counts `ending`.
  void EndSlot(Slot& slot, Ending ending, absl::Status status, absl::Time now);
  Ending OnToken(Slot& slot, const runtime::SampledToken& token, absl::Time now);
  void Publish();

  // Before engine_: the series options_ holds are the engine's kernel observer, so they must be
  // destroyed after it.
  const Options options_;
  std::unique_ptr<runtime::Engine> engine_;
  std::shared_ptr<const runtime::Tokenizer> tokenizer_;
  std::vector<int32_t> eos_ids_;

  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
  int running_count_ ABSL_GUARDED_BY(mu_) = 0;
  bool admitting_ ABSL_GUARDED_BY(mu_) = true;
  std::optional<absl::Status> abort_ ABSL_GUARDED_BY(mu_);  // set by AbortAll until the next step

  // Worker thread only.
  std::vector<std::unique_ptr<Slot>> running_;
};

}  // namespace kbitd::server
