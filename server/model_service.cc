#include "server/model_service.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "server/grpc_status.h"

namespace kbitd::server {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

// The one TensorDtype mapping of Dequantize and ExportDequantized; nullopt for UNSPECIFIED, whose
// meaning differs between them. Proto3 enums are open, so a client built from a newer proto can
// send a value this daemon does not know: refused rather than served as some other dtype.
absl::StatusOr<std::optional<ScalarType>> ScalarTypeOf(v1::TensorDtype dtype) {
  switch (dtype) {
    case v1::TENSOR_DTYPE_UNSPECIFIED:
      return std::nullopt;
    case v1::TENSOR_DTYPE_FLOAT32:
      return ScalarType::kFloat32;
    case v1::TENSOR_DTYPE_FLOAT16:
      return ScalarType::kFloat16;
    case v1::TENSOR_DTYPE_BFLOAT16:
      return ScalarType::kBFloat16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype: unknown TensorDtype ", static_cast<int>(dtype)));
  }
}

// Streams one dequantized tensor: computed on its own thread, then written chunk by chunk.
class DequantizeCall final : public grpc::ServerWriteReactor<v1::DequantizeChunk> {
 public:
  DequantizeCall(std::shared_ptr<ServedModel> model, v1::DequantizeRequest request,
                 ScalarType dtype) {
    std::thread([this, model = std::move(model), request = std::move(request), dtype] {
      Compute(*model, request, dtype);
    }).detach();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    WriteNext();
  }
  // gRPC calls OnDone only after Finish, and Finish comes after Compute, so this is safe.
  void OnDone() override { delete this; }

 private:
  void Compute(const ServedModel& model, const v1::DequantizeRequest& request, ScalarType dtype) {
    const v1::TensorDtype wire = request.dtype() == v1::TENSOR_DTYPE_UNSPECIFIED
                                     ? v1::TENSOR_DTYPE_FLOAT32
                                     : request.dtype();
    // Names may be given with or without the ".weight" suffix.
    std::string name = request.tensor();
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
      name.resize(name.size() - 7);
    }
    std::vector<int64_t> shape;
    absl::Status status = model.model->DequantizeLinear(name, dtype, &data_, &shape);
    if (status.ok()) {
      v1::DequantizeChunk& head = first_;
      head.set_tensor(request.tensor());
      head.mutable_shape()->Add(shape.begin(), shape.end());
      head.set_dtype(wire);
      if (const runtime::LinearWeight* w = model.model->FindLinear(name)) {
        v1::QuantizationStats& stats = *head.mutable_stats();
        stats.set_quant_type(w->is_dense() ? "none"
                                           : std::string(quant::QuantTypeName(*w->quant_type)));
        // GPTQ: its group size (-1: one group), the unit its scales cover.
        stats.set_blocksize(w->is_four_bit() ? static_cast<int32_t>(w->blocksize)
                            : w->is_gptq()   ? static_cast<int32_t>(w->gptq.group_size)
                                             : 0);
        stats.set_double_quant(w->nested());
        stats.set_fp16_bytes(2 * w->out_features * w->in_features);
      }
      element_size_ = ScalarTypeSize(dtype);
    }
    status_ = status;
    WriteNext();
  }

  void WriteNext() {
    if (!status_.ok()) return Finish(ToGrpcStatus(status_));
    if (offset_ >= data_.size() && offset_ > 0) return Finish(grpc::Status::OK);
    chunk_ = offset_ == 0 ? first_ : v1::DequantizeChunk();
    const size_t bytes =
        std::min(kChunkBytes - kChunkBytes % element_size_, data_.size() - offset_);
    chunk_.set_element_offset(static_cast<int64_t>(offset_ / element_size_));
    chunk_.set_data(data_.data() + offset_, bytes);
    offset_ += bytes;
    if (bytes == 0) offset_ = 1;  // an empty tensor: one chunk, then finish
    StartWrite(&chunk_);
  }

  absl::Status status_;
  std::vector<uint8_t> data_;
  size_t element_size_ = 4;
  size_t offset_ = 0;
  v1::DequantizeChunk first_;
  v1::DequantizeChunk chunk_;
};

}  // namespace

grpc::ServerUnaryReactor* ModelService::LoadModel(grpc::CallbackServerContext* context,
                                                  const v1::LoadModelRequest* request,
                                                  v1::ModelInfo* response) {
  if (absl::Status auth = auth_->Check(*context); !auth.ok()) return FinishUnary(context, auth);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  registry_->Load(*request, [reactor, response](absl::StatusOr<v1::ModelInfo> info) {
    if (info.ok()) *response = *std::move(info);
    reactor->Finish(ToGrpcStatus(info.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* ModelService::UnloadModel(grpc::CallbackServerContext* context,
                                                    const v1::UnloadModelRequest* request,
                                                    v1::UnloadModelResponse* response) {
  if (absl::Status auth = auth_->Check(*context); !auth.ok()) return FinishUnary(context, auth);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  registry_->Unload(request->name(),
                    [reactor, response](absl::StatusOr<v1::UnloadModelResponse> result) {
                      if (result.ok()) *response = *std::move(result);
                      reactor->Finish(ToGrpcStatus(result.status()));
                    });
  return reactor;
}

grpc::ServerUnaryReactor* ModelService::ListModels(grpc::CallbackServerContext* context,
                                                   const v1::ListModelsRequest*,
                                                   v1::ListModelsResponse* response) {
  for (v1::ModelInfo& info : registry_->List()) *response->add_models() = std::move(info);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* ModelService::GetModel(grpc::CallbackServerContext* context,
                                                 const v1::GetModelRequest* request,
                                                 v1::ModelInfo* response) {
  absl::StatusOr<v1::ModelInfo> info = registry_->Info(request->name());
  if (info.ok()) *response = *std::move(info);
  return FinishUnary(context, info.status());
}

grpc::ServerWriteReactor<v1::DequantizeChunk>* ModelService::Dequantize(
    grpc::CallbackServerContext* /*context*/, const v1::DequantizeRequest* request) {
  absl::StatusOr<std::optional<ScalarType>> dtype = ScalarTypeOf(request->dtype());
  if (!dtype.ok()) return new FailedStream<v1::DequantizeChunk>(dtype.status());
  absl::StatusOr<std::shared_ptr<ServedModel>> model = registry_->Get(request->model());
  if (!model.ok()) return new FailedStream<v1::DequantizeChunk>(model.status());
  // Unspecified: float32.
  return new DequantizeCall(*std::move(model), *request, dtype->value_or(ScalarType::kFloat32));
}

grpc::ServerUnaryReactor* ModelService::ExportDequantized(
    grpc::CallbackServerContext* context, const v1::ExportDequantizedRequest* request,
    v1::ExportDequantizedResponse* response) {
  if (absl::Status auth = auth_->Check(*context); !auth.ok()) return FinishUnary(context, auth);
  // Unspecified: the model's original dtype, as kbitq dequantize writes without --dtype.
  absl::StatusOr<std::optional<ScalarType>> dtype = ScalarTypeOf(request->dtype());
  if (!dtype.ok()) return FinishUnary(context, dtype.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  registry_->Export(request->model(), request->output_path(), *dtype,
                    [reactor, response, path = request->output_path()](
                        absl::StatusOr<runtime::ConvertSummary> summary) {
                      if (summary.ok()) {
                        response->set_output_path(path);
                        response->set_tensors(summary->converted + summary->copied);
                        response->set_bytes(static_cast<int64_t>(summary->bytes_written));
                      }
                      reactor->Finish(ToGrpcStatus(summary.status()));
                    });
  return reactor;
}

}  // namespace kbitd::server
