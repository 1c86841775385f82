#include "server/scheduler.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kbitd::server {
namespace {

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// How much earlier than the daemon's deadline the client's may pass: the request's transit to
// the daemon. Over loopback, with 8 calls at a time on 2 busy cores, the client's cancel came
// 0.3 to 3.6 ms before the daemon's deadline (4 of 200 deadline endings counted as cancels
// without this); networks within a region add a few ms.
constexpr absl::Duration kClientDeadlineLead = absl::Milliseconds(20);

}  // namespace

Scheduler::Scheduler(std::unique_ptr<runtime::Engine> engine,
                     std::shared_ptr<const runtime::Tokenizer> tokenizer, Options options)
    : options_(std::move(options)), engine_(std::move(engine)), tokenizer_(std::move(tokenizer)) {
  for (int64_t id : engine_->model().config().eos_token_ids) {
    eos_ids_.push_back(static_cast<int32_t>(id));
  }
}

Scheduler::~Scheduler() {
  // Whoever drops the last reference ends what is left (normally nothing: unload drains first).
  absl::Status gone = absl::UnavailableError("the model was unloaded");
  for (auto& slot : running_) slot->request->Finish(gone);
  absl::MutexLock lock(&mu_);
  for (auto& request : queue_) request->Finish(gone);
}

absl::Status Scheduler::Enqueue(std::shared_ptr<Request> request) {
  const GenerateParams& p = request->params();
  const int64_t need = engine_->KvBlocksNeeded(
      std::min<int64_t>(engine_->max_context(), p.prompt.size() + p.max_new_tokens));
  if (need > engine_->kv_blocks_total()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", need, " KV cache blocks, more than the model's whole cache (",
        engine_->kv_blocks_total(), "); lower max_new_tokens or the prompt"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!admitting_) {
      return absl::UnavailableError("the model is unloading or the daemon is shutting down");
    }
    if (static_cast<int32_t>(queue_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the model's queue is full (", options_.max_queue, " requests waiting); retry later"));
    }
    queue_.push_back(std::move(request));
    if (options_.metrics) options_.metrics->queue_requests->Set(queue_.size());
  }
  if (options_.wakeup) options_.wakeup();
  return absl::OkStatus();
}

void Scheduler::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  admitting_ = false;
}

int Scheduler::AbortAll(absl::Status status) {
  int count;
  {
    absl::MutexLock lock(&mu_);
    abort_ = std::move(status);
    count = static_cast<int>(queue_.size()) + running_count_;
  }
  if (options_.wakeup) options_.wakeup();
  return count;
}

int Scheduler::InFlight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size()) + running_count_;
}

bool Scheduler::WaitIdle(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto idle = [this]()
                  ABSL_SHARED_LOCKS_REQUIRED(mu_) { return queue_.empty() && running_count_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

bool Scheduler::HasWork() const {
  absl::MutexLock lock(&mu_);
  return !queue_.empty() || running_count_ > 0;
}

void Scheduler::TakeAdmitted(std::vector<std::shared_ptr<Request>>* admitted,
                             std::optional<absl::Status>* abort) {
  absl::MutexLock lock(&mu_);
  abort->swap(abort_);
  abort_.reset();
  // Requests that ended while waiting leave the queue now.
  for (auto it = queue_.begin(); it != queue_.end();) {
    Request& request = **it;
    const Ending ending = EndingBeforeStep(request, abort->has_value());
    if (ending == Ending::kNone) {
      ++it;
      continue;
    }
    if (options_.metrics) options_.metrics->CountRequest(OutcomeOf(ending));
    if (ending == Ending::kAborted && !(*abort)->ok()) {
      request.Finish(**abort);
    } else if (ending == Ending::kAborted) {
      v1::GenerateResponse last;
      last.set_finish_reason(v1::FINISH_REASON_CANCELLED);
      last.mutable_usage()->set_prompt_tokens(request.params().prompt.size());
      request.Emit(last);
      request.Finish(absl::OkStatus());
    } else if (ending == Ending::kCancelled) {
      request.Finish(absl::CancelledError("cancelled by the client"));
    } else {
      request.Finish(absl::DeadlineExceededError("the deadline passed while queued"));
    }
    it = queue_.erase(it);
  }
  std::vector<QueuedItem> items;
  std::vector<RunningItem> running;
  for (const auto& slot : running_) {
    const uint64_t id = slot->request->id();
    running.push_back({id, engine_->RemainingPromptTokens(id), engine_->SequenceLength(id),
                       slot->max_total_tokens});
  }
  const int32_t max_context = engine_->max_context();
  for (size_t i = 0; i < queue_.size() && i < static_cast<size_t>(options_.limits.max_batch_size);
       ++i) {
    const GenerateParams& p = queue_[i]->params();
    const int32_t prompt = static_cast<int32_t>(p.prompt.size());
    items.push_back({prompt, std::min(max_context, prompt + p.max_new_tokens)});
  }
  const int32_t count = AdmitCount(
      items, running, options_.limits,
      {.free_blocks = engine_->kv_blocks_free(), .block_size = engine_->kv_block_size()});
  for (int32_t i = 0; i < count; ++i) {
    admitted->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  running_count_ += count;
}

void Scheduler::StartSlot(std::shared_ptr<Request> request, absl::Time now) {
  const GenerateParams& p = request->params();
  absl::Status added = engine_->AddSequence(request->id(), p.prompt, p.sampling);
  if (!added.ok()) {
    if (options_.metrics) options_.metrics->CountRequest(RequestOutcome::kInvalid);
    request->Finish(added);
    absl::MutexLock lock(&mu_);
    --running_count_;
    return;
  }
  auto slot = std::make_unique<Slot>(Slot{
      .request = std::move(request),
      .prompt_tokens = static_cast<int32_t>(p.prompt.size()),
      .max_total_tokens = std::min(engine_->max_context(),
                                   static_cast<int32_t>(p.prompt.size()) + p.max_new_tokens),
      .stop = StopMatcher(p.stop),
      .decoder = runtime::StreamingDecoder(*tokenizer_,
                                           /*skip_special_tokens=*/true),
      .admitted = now,
      .last_token = now,
  });
  if (options_.metrics) {
    options_.metrics->queue_seconds->Observe(Seconds(now - slot->request->arrival()));
    options_.metrics->prompt_tokens->Increment(slot->prompt_tokens);
  }
  running_.push_back(std::move(slot));
}

RequestOutcome Scheduler::OutcomeOf(Ending ending) {
  switch (ending) {
    case Ending::kLength:
      return RequestOutcome::kLength;
    case Ending::kStop:
      return RequestOutcome::kStop;
    case Ending::kAborted:
    case Ending::kCancelled:
      return RequestOutcome::kCancelled;
    case Ending::kDeadlineExceeded:
      return RequestOutcome::kDeadlineExceeded;
    case Ending::kNone:
    case Ending::kFailed:
      break;
  }
  return RequestOutcome::kError;
}

Scheduler::Ending Scheduler::EndingBeforeStep(const Request& request, bool abort) const {
  // A request past its deadline has usually been cancelled too (gRPC cancels the call then), so
  // the deadline is checked first. The flag is read before the clock, so a cancel that the
  // deadline caused is never paired with a time before the deadline.
  const bool cancelled = request.cancelled();
  const absl::Time now = options_.clock->Now();
  const absl::Time deadline = request.params().deadline;
  if (now >= deadline) return Ending::kDeadlineExceeded;
  if (cancelled) {
    // The client's own deadline timer started before ours (ours starts when the request arrives)
    // and its cancel reaches us that much earlier: a cancel this close to the deadline is the
    // deadline.
    return now >= deadline - kClientDeadlineLead ? Ending::kDeadlineExceeded : Ending::kCancelled;
  }
  return abort ? Ending::kAborted : Ending::kNone;
}

void Scheduler::EndSlot(Slot& slot, Ending ending, absl::Status status, absl::Time now) {
  engine_->RemoveSequence(slot.request->id());
  Request& request = *slot.request;
  if (status.ok()) {
    v1::GenerateResponse last;
    if (ending != Ending::kStop) {
      std::string tail = slot.stop.Append(slot.decoder.Flush());
      if (!slot.stop.stopped()) tail += slot.stop.Flush();
      last.set_text(tail);
    }
    last.set_finish_reason(ending == Ending::kStop     ? v1::FINISH_REASON_STOP
                           : ending == Ending::kLength ? v1::FINISH_REASON_LENGTH
                                                       : v1::FINISH_REASON_CANCELLED);
    v1::Usage& usage = *last.mutable_usage();
    usage.set_prompt_tokens(slot.prompt_tokens);
    usage.set_completion_tokens(slot.generated);
    usage.set_queue_seconds(Seconds(slot.admitted - request.arrival()));
    const double total = Seconds(now - request.arrival());
    usage.set_total_seconds(total);
    if (slot.generated > 0) {
      const double ttft = Seconds(slot.first_token - request.arrival());
      usage.set_time_to_first_token_seconds(ttft);
      const double decode = Seconds(slot.last_token - slot.first_token);
      if (slot.generated > 1 && decode > 0)
        usage.set_tokens_per_second((slot.generated - 1) / decode);
    }
    request.Emit(last);
    if (options_.metrics) options_.metrics->request_duration->Observe(total);
  }
  if (options_.metrics) options_.metrics->CountRequest(OutcomeOf(ending));
  request.Finish(std::move(status));
}

Scheduler::Ending Scheduler::OnToken(Slot& slot, const runtime::SampledToken& sampled,
                                     absl::Time now) {
  const GenerateParams& p = slot.request->params();
  ++slot.generated;
  if (slot.generated == 1) {
    slot.first_token = now;
    if (options_.metrics) {
      options_.metrics->time_to_first_token->Observe(Seconds(now - slot.request->arrival()));
    }
  } else if (options_.metrics) {
    options_.metrics->inter_token_latency->Observe(Seconds(now - slot.last_token));
  }
  slot.last_token = now;

  v1::GenerateResponse delta;
  delta.add_token_ids(sampled.token);
  if (p.logprobs) {
    v1::TokenLogprobs& lp = *delta.add_logprobs();
    lp.set_token_id(sampled.token);
    lp.set_logprob(sampled.logprob);
    for (const runtime::TokenLogprob& alt : sampled.top) {
      v1::TokenLogprob& t = *lp.add_top();
      t.set_token_id(alt.token);
      t.set_logprob(alt.logprob);
    }
  }
  Ending ending = Ending::kNone;
  const bool eos = std::find(eos_ids_.begin(), eos_ids_.end(), sampled.token) != eos_ids_.end();
  const bool stop_id = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), sampled.token) !=
                       p.stop_token_ids.end();
  // EOS text is not returned (a special token); a stop token id's text is.
  // Ids past the tokenizer's vocabulary (padded embedding rows) have no text.
  const std::string piece = eos ? std::string() : slot.decoder.Push(sampled.token).value_or("");
  delta.set_text(slot.stop.Append(piece));
  if (eos || stop_id || slot.stop.stopped()) {
    ending = Ending::kStop;
  } else if (slot.generated >= p.max_new_tokens ||
             slot.prompt_tokens + slot.generated >= slot.max_total_tokens) {
    ending = Ending::kLength;
  }
  slot.request->Emit(delta);
  return ending;
}

void Scheduler::Publish() {
  if (!options_.metrics) return;
  {
    absl::MutexLock lock(&mu_);
    options_.metrics->queue_requests->Set(queue_.size());
  }
  options_.metrics->running_requests->Set(running_.size());
  const int64_t total = engine_->kv_blocks_total();
  if (total > 0) {
    options_.metrics->kv_cache_usage->Set(static_cast<double>(total - engine_->kv_blocks_free()) /
                                          total);
  }
}

absl::Status Scheduler::Step() {
  const absl::Time start = options_.clock->Now();
  std::vector<std::shared_ptr<Request>> admitted;
  std::optional<absl::Status> abort;
  TakeAdmitted(&admitted, &abort);
  for (auto& request : admitted) StartSlot(std::move(request), start);

  // Retire running requests that were cancelled, expired or aborted.
  int retired = 0;
  for (auto& slot : running_) {
    const Ending ending = EndingBeforeStep(*slot->request, abort.has_value());
    if (ending == Ending::kNone) continue;
    absl::Status status = absl::OkStatus();
    if (ending == Ending::kAborted) {
      status = *abort;
    } else if (ending == Ending::kCancelled) {
      status = absl::CancelledError("cancelled by the client");
    } else if (ending == Ending::kDeadlineExceeded) {
      status = absl::DeadlineExceededError(
          absl::StrCat("the deadline passed after ", slot->generated, " tokens"));
    }
    EndSlot(*slot, ending, std::move(status), start);
    slot.reset();
    ++retired;
  }
  std::erase(running_, nullptr);

  std::vector<RunningItem> items;
  absl::flat_hash_map<uint64_t, Slot*> by_id;
  for (auto& slot : running_) {
    const uint64_t id = slot->request->id();
    items.push_back({id, engine_->RemainingPromptTokens(id), engine_->SequenceLength(id),
                     slot->max_total_tokens});
    by_id[id] = slot.get();
  }
  const std::vector<StepItem> plan = PlanStep(items, options_.limits);
  std::vector<runtime::SequenceWork> work;
  int64_t step_tokens = 0;
  for (const StepItem& item : plan) {
    work.push_back({item.id, item.num_tokens});
    step_tokens += item.num_tokens;
  }

  absl::Status status = absl::OkStatus();
  absl::Duration engine_time;
  if (!work.empty()) {
    const absl::Time engine_start = options_.clock->Now();
    absl::StatusOr<std::vector<runtime::SampledToken>> sampled = engine_->Step(work);
    const absl::Time engine_end = options_.clock->Now();
    engine_time = engine_end - engine_start;
    if (!sampled.ok()) {
      // The engine changed nothing; fail the batch rather than retry a step that may fail again.
      status = sampled.status();
      KBITD_LOG(Error) << "engine step failed: " << status;
      for (auto& slot : running_) {
        EndSlot(*slot, Ending::kFailed,
                absl::InternalError(absl::StrCat("engine step failed: ", status.message())),
                engine_end);
        ++retired;
      }
      running_.clear();
    } else {
      for (const runtime::SampledToken& token : *sampled) {
        auto it = by_id.find(token.sequence_id);
        if (it == by_id.end()) continue;
        Slot& slot = *it->second;
        const Ending ending = OnToken(slot, token, engine_end);
        if (ending != Ending::kNone) {
          EndSlot(slot, ending, absl::OkStatus(), engine_end);
          it->second = nullptr;
          ++retired;
        }
      }
      std::erase_if(running_, [&](const std::unique_ptr<Slot>& slot) {
        return by_id[slot->request->id()] == nullptr;
      });
      if (options_.metrics) {
        options_.metrics->generated_tokens->Increment(sampled->size());
      }
    }
  }
  if (retired > 0) {
    absl::MutexLock lock(&mu_);
    running_count_ -= retired;
  }
  if (options_.metrics && !work.empty()) {
    options_.metrics->step_duration->Observe(Seconds(engine_time));
    options_.metrics->step_tokens->Observe(static_cast<double>(step_tokens));
    options_.metrics->scheduler_overhead->Observe(
        Seconds(options_.clock->Now() - start - engine_time));
  }
  Publish();
  return status;
}

}  // namespace kbitd::server
