// kbitd.v1.ModelService on gRPC's callback API. Load, Unload and ExportDequantized hand their work
// to the registry's threads and finish the call from there; Dequantize runs on its own thread and
// streams chunks one write at a time. LoadModel, UnloadModel and ExportDequantized check the admin
// token first. Requests protobuf cannot parse are answered INVALID_ARGUMENT before the handlers
// (parse_checked.h). Thread-safe.
#pragma once

#include "kbitd/v1/model_service.grpc.pb.h"
#include "server/auth.h"
#include "server/model_registry.h"
#include "server/parse_checked.h"

namespace kbitd::server {

class ModelService final : public ParseCheckedService<v1::ModelService> {
 public:
  ModelService(ModelRegistry* registry, const AdminAuth* auth) : registry_(registry), auth_(auth) {
    CheckParsing("LoadModel", &ModelService::LoadModel);
    CheckParsing("UnloadModel", &ModelService::UnloadModel);
    CheckParsing("ListModels", &ModelService::ListModels);
    CheckParsing("GetModel", &ModelService::GetModel);
    CheckParsing("Dequantize", &ModelService::Dequantize);
    CheckParsing("ExportDequantized", &ModelService::ExportDequantized);
  }

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context,
                                      const v1::LoadModelRequest* request,
                                      v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* UnloadModel(grpc::CallbackServerContext* context,
                                        const v1::UnloadModelRequest* request,
                                        v1::UnloadModelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;
  grpc::ServerWriteReactor<v1::DequantizeChunk>* Dequantize(
      grpc::CallbackServerContext* context, const v1::DequantizeRequest* request) override;
  grpc::ServerUnaryReactor* ExportDequantized(grpc::CallbackServerContext* context,
                                              const v1::ExportDequantizedRequest* request,
                                              v1::ExportDequantizedResponse* response) override;

 private:
  ModelRegistry* registry_;
  const AdminAuth* auth_;
};

}  // namespace kbitd::server
