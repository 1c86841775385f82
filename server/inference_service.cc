#include "server/inference_service.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/grpc_status.h"

namespace kbitd::server {
namespace {

// The Generate stream: forwards gRPC events to the request's outbox and keeps the model alive
// until the call is done.
class GenerateCall final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // Takes the request's outbox; an error status finishes the call at once.
  GenerateCall(std::shared_ptr<ServedModel> model, std::shared_ptr<Request> request)
      : model_(std::move(model)), request_(std::move(request)) {
    request_->Attach(this);
  }
  explicit GenerateCall(const absl::Status& error) { Finish(ToGrpcStatus(error)); }

  void OnWriteDone(bool ok) override { request_->OnWriteDone(ok); }
  void OnCancel() override {
    if (request_) request_->Cancel();
  }
  void OnDone() override {
    if (request_) request_->Attach(nullptr);
    delete this;
  }

 private:
  std::shared_ptr<ServedModel> model_;
  std::shared_ptr<Request> request_;
};

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

}  // namespace

absl::StatusOr<GenerateParams> ValidateGenerate(const v1::GenerateRequest& request,
                                                const runtime::Model& model,
                                                const runtime::Tokenizer& tokenizer,
                                                int32_t max_context,
                                                const v1::LimitsConfig& limits) {
  GenerateParams params;
  const bool has_text = !request.prompt().empty();
  const bool has_ids = request.prompt_token_ids_size() > 0;
  if (has_text == has_ids) {
    return Invalid("prompt", has_text ? "set prompt or prompt_token_ids, not both"
                                      : "the prompt is empty: set prompt or prompt_token_ids");
  }
  if (has_text) {
    auto ids = tokenizer.Encode(request.prompt(),
                                !request.has_add_special_tokens() || request.add_special_tokens());
    if (!ids.ok()) return Invalid("prompt", std::string(ids.status().message()));
    params.prompt = *std::move(ids);
    if (params.prompt.empty()) return Invalid("prompt", "the prompt has no tokens");
  } else {
    const int64_t vocab = model.config().vocab_size;
    for (int32_t id : request.prompt_token_ids()) {
      if (id < 0 || id >= vocab) {
        return Invalid(
            "prompt_token_ids",
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    params.prompt.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  }
  const int32_t prompt = static_cast<int32_t>(params.prompt.size());
  const int32_t max_prompt = std::min(limits.max_prompt_tokens(), max_context - 1);
  if (prompt > max_prompt) {
    return Invalid("prompt", absl::StrCat("the prompt has ", prompt, " tokens; at most ",
                                          max_prompt, " fit (context ", max_context, ")"));
  }
  if (request.max_new_tokens() < 0 || request.max_new_tokens() > limits.max_new_tokens()) {
    return Invalid("max_new_tokens", absl::StrCat("must be in [1, ", limits.max_new_tokens(),
                                                  "], got ", request.max_new_tokens()));
  }
  if (request.max_new_tokens() == 0) {
    // The default shrinks to what the context has left.
    params.max_new_tokens = std::min(limits.default_max_new_tokens(), max_context - prompt);
  } else {
    params.max_new_tokens = request.max_new_tokens();
    if (prompt + params.max_new_tokens > max_context) {
      return Invalid("max_new_tokens",
                     absl::StrCat(prompt, " prompt tokens + ", params.max_new_tokens,
                                  " new tokens exceed the model's context of ", max_context));
    }
  }
  const v1::SamplingParams& s = request.sampling();
  runtime::SamplingParams& sampling = params.sampling;
  if (s.has_temperature()) sampling.temperature = s.temperature();
  if (s.has_top_k()) sampling.top_k = s.top_k();
  if (s.has_top_p()) sampling.top_p = s.top_p();
  if (s.has_min_p()) sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) sampling.repetition_penalty = s.repetition_penalty();
  sampling.seed = s.has_seed() ? s.seed() : std::random_device()();
  if (request.top_logprobs() < 0 || request.top_logprobs() > runtime::kMaxTopLogprobs) {
    return Invalid("top_logprobs", absl::StrCat("must be in [0, ", runtime::kMaxTopLogprobs,
                                                "], got ", request.top_logprobs()));
  }
  sampling.top_logprobs = request.logprobs() ? request.top_logprobs() : 0;
  if (absl::Status valid = runtime::ValidateSamplingParams(sampling); !valid.ok()) {
    return Invalid("sampling", std::string(valid.message()));
  }
  params.logprobs = request.logprobs();
  if (request.stop_size() > limits.max_stop_strings()) {
    return Invalid("stop", absl::StrCat("at most ", limits.max_stop_strings(),
                                        " stop strings, got ", request.stop_size()));
  }
  for (const std::string& stop : request.stop()) {
    if (stop.empty() || static_cast<int32_t>(stop.size()) > limits.max_stop_string_bytes()) {
      return Invalid("stop", absl::StrCat("stop strings must have 1 to ",
                                          limits.max_stop_string_bytes(), " bytes"));
    }
    params.stop.push_back(stop);
  }
  for (int32_t id : request.stop_token_ids()) {
    if (id < 0 || id >= model.config().vocab_size) {
      return Invalid("stop_token_ids", absl::StrCat("token id ", id, " is outside the vocabulary"));
    }
    params.stop_token_ids.push_back(id);
  }
  return params;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  // Found, not created: the name is the client's, so an unknown one must add no series.
  const std::shared_ptr<const ModelMetrics> metrics =
      metrics_ ? metrics_->FindModel(request->model()) : nullptr;
  auto fail = [&](const absl::Status& status, RequestOutcome outcome) {
    if (metrics) metrics->CountRequest(outcome);
    return new GenerateCall(status);
  };
  absl::StatusOr<std::shared_ptr<ServedModel>> model = registry_->Get(request->model());
  if (!model.ok()) return fail(model.status(), RequestOutcome::kInvalid);
  const Scheduler& scheduler = *(*model)->scheduler;
  absl::StatusOr<GenerateParams> params = ValidateGenerate(
      *request, *(*model)->model, *(*model)->tokenizer, scheduler.engine().max_context(), limits_);
  if (!params.ok()) return fail(params.status(), RequestOutcome::kInvalid);
  const absl::Time now = absl::Now();
  const gpr_timespec deadline = context->raw_deadline();
  if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) != 0) {
    params->deadline = absl::FromChrono(context->deadline());
  }
  auto call = std::make_shared<Request>(next_id_.fetch_add(1), *std::move(params), now);
  if (absl::Status queued = (*model)->scheduler->Enqueue(call); !queued.ok()) {
    return fail(queued, queued.code() == absl::StatusCode::kResourceExhausted
                            ? RequestOutcome::kRejected
                            : RequestOutcome::kInvalid);
  }
  return new GenerateCall(*std::move(model), std::move(call));
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  absl::StatusOr<std::shared_ptr<ServedModel>> model = registry_->Get(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  auto ids = (*model)->tokenizer->Encode(
      request->text(), !request->has_add_special_tokens() || request->add_special_tokens());
  if (!ids.ok()) return FinishUnary(context, Invalid("text", std::string(ids.status().message())));
  response->mutable_token_ids()->Add(ids->begin(), ids->end());
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::Detokenize(grpc::CallbackServerContext* context,
                                                       const v1::DetokenizeRequest* request,
                                                       v1::DetokenizeResponse* response) {
  absl::StatusOr<std::shared_ptr<ServedModel>> model = registry_->Get(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  auto text = (*model)->tokenizer->Decode(ids, request->skip_special_tokens());
  if (!text.ok())
    return FinishUnary(context, Invalid("token_ids", std::string(text.status().message())));
  response->set_text(*std::move(text));
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace kbitd::server
