#include "server/request.h"

#include <deque>
#include <thread>

#include "server/grpc_status.h"

namespace kbitd::server {
namespace {

// Starts the writes the device worker asks for, so the worker's step never pays for gRPC's
// serialization and send (measured with bench/loadgen: it was most of the scheduler's time per
// step). One thread for the process; it lives as long as the process.
class Writer {
 public:
  static Writer& Get() {
    static Writer* writer = new Writer();
    return *writer;
  }
  void Post(std::shared_ptr<Request> request) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(request));
  }

 private:
  Writer() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    while (true) {
      std::deque<std::shared_ptr<Request>> batch;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](std::deque<std::shared_ptr<Request>>* q) { return !q->empty(); }, &queue_));
        batch.swap(queue_);
      }
      for (auto& request : batch) request->PumpScheduled();
    }
  }
  absl::Mutex mu_;
  std::deque<std::shared_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void Request::Schedule() {
  if (call_ == nullptr || writing_ || finished_ || scheduled_) return;
  scheduled_ = true;
  Writer::Get().Post(shared_from_this());
}

void Request::PumpScheduled() {
  absl::MutexLock lock(&mu_);
  scheduled_ = false;
  Pump();
}

void Request::Emit(const v1::GenerateResponse& delta) {
  absl::MutexLock lock(&mu_);
  if (final_.has_value()) return;
  if (!has_pending_) {
    pending_ = delta;
    has_pending_ = true;
  } else {
    // Concatenate: ids, text and logprobs append; finish_reason and usage come last anyway.
    pending_.mutable_token_ids()->Add(delta.token_ids().begin(), delta.token_ids().end());
    pending_.mutable_text()->append(delta.text());
    pending_.mutable_logprobs()->MergeFrom(delta.logprobs());
    if (delta.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      pending_.set_finish_reason(delta.finish_reason());
    }
    if (delta.has_usage()) *pending_.mutable_usage() = delta.usage();
  }
  Schedule();
}

void Request::Finish(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (final_.has_value()) return;
  final_ = std::move(status);
  // A failed call sends no further data.
  if (!final_->ok()) has_pending_ = false;
  Schedule();
}

void Request::Attach(Call* call) {
  absl::MutexLock lock(&mu_);
  call_ = call;
  if (call_ != nullptr) Pump();
}

void Request::OnWriteDone(bool ok) {
  if (!ok) Cancel();  // the stream is broken: the client is gone
  absl::MutexLock lock(&mu_);
  writing_ = false;
  if (!ok) has_pending_ = false;
  Pump();
}

void Request::Pump() {
  if (call_ == nullptr || writing_ || finished_) return;
  if (has_pending_) {
    in_flight_.Swap(&pending_);
    pending_.Clear();
    has_pending_ = false;
    writing_ = true;
    call_->StartWrite(&in_flight_);
    return;
  }
  if (final_.has_value()) {
    finished_ = true;
    call_->Finish(ToGrpcStatus(*final_));
  }
}

}  // namespace kbitd::server
