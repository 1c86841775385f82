// kbitd.v1.InferenceService on gRPC's callback API. Generate validates and tokenizes the request,
// enqueues it on the model's scheduler and returns; tokens go out through the request's outbox
// (request.h). Tokenize and Detokenize answer inline. Handlers never block. Requests protobuf
// cannot parse are answered INVALID_ARGUMENT before the handlers (parse_checked.h). Thread-safe.
#pragma once

#include <atomic>

#include "kbitd/v1/config.pb.h"
#include "kbitd/v1/inference_service.grpc.pb.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/parse_checked.h"

namespace kbitd::server {

class InferenceService final : public ParseCheckedService<v1::InferenceService> {
 public:
  InferenceService(ModelRegistry* registry, Metrics* metrics, const v1::LimitsConfig& limits)
      : registry_(registry), metrics_(metrics), limits_(limits) {
    CheckParsing("Generate", &InferenceService::Generate);
    CheckParsing("Tokenize", &InferenceService::Tokenize);
    CheckParsing("Detokenize", &InferenceService::Detokenize);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;

 private:
  ModelRegistry* registry_;
  Metrics* metrics_;
  const v1::LimitsConfig limits_;
  std::atomic<uint64_t> next_id_{1};
};

// Checks a Generate request against the model and the limits and turns it into scheduler params.
// INVALID_ARGUMENT naming the field at fault.
absl::StatusOr<GenerateParams> ValidateGenerate(const v1::GenerateRequest& request,
                                                const runtime::Model& model,
                                                const runtime::Tokenizer& tokenizer,
                                                int32_t max_context,
                                                const v1::LimitsConfig& limits);

}  // namespace kbitd::server
