// Requests that protobuf refuses to parse are answered INVALID_ARGUMENT naming the field at fault,
// for every RPC of a service, instead of gRPC's bare UNIMPLEMENTED.
//
// Why this is needed: in gRPC 1.51 (Debian 12) the callback API's handlers
// (grpcpp/impl/codegen/server_callback_handlers.h) drop the status of a failed deserialization and
// finish the call with UNIMPLEMENTED and an empty message, before any code of ours runs. Proto3
// string fields must hold valid UTF-8, so a stop string or model name with bytes 0xff 0xfe makes
// clients believe the server lacks the RPC.
//
// The design: every method is served through the same callback handler templates the generated
// code uses, but with the request type wrapped in ParsedRequest<Request>, whose
// grpc::SerializationTraits (gRPC's public hook for custom serialization) always succeeds and keeps
// the parse result. The handler then answers the parse error itself, or calls the service's usual
// typed method. Alternatives we rejected: the generated WithRawCallbackMethod_* wrappers also make
// the responses raw ByteBuffers, which would move serialization into every handler and into the
// Generate outbox (request.h); turning string fields into `bytes` would change the Python and C++
// client API. Requests that parse are parsed exactly as before (same parser, same buffer reader,
// request lifetime owned by gRPC), so only the failure path is new.
#pragma once

#include <set>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "server/grpc_status.h"

namespace kbitd::server {

// Why protobuf refused `bytes` as a `type`, found by walking the wire format against the
// descriptor (nested messages and map entries included): INVALID_ARGUMENT
// "field kbitd.v1.GenerateRequest.stop[1] is not valid UTF-8 (...)" for the first string field in
// wire order holding invalid UTF-8, "field ... is not a valid <type> message" for a nested message
// whose bytes are malformed, otherwise "... could not be parsed".
absl::Status ExplainParseFailure(const google::protobuf::Descriptor& type, std::string_view bytes);

// Parses `buffer` (consuming it) into `message`; on failure, ExplainParseFailure's status.
absl::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message);

// A request as the handlers receive it: the message, or why it could not be parsed.
template <class Message>
struct ParsedRequest {
  Message message;
  absl::Status status;
};

// The method `method` of service `service` (full name), checked against the handler's types.
absl::StatusOr<int> MethodIndex(const std::string& service, const std::string& method,
                                const google::protobuf::Descriptor& request,
                                const google::protobuf::Descriptor& response,
                                bool server_streaming);

// OK when every method of `service` is in `registered`, else INTERNAL naming the first missing.
absl::Status CheckAllMethodsRegistered(const std::string& service,
                                       const std::set<std::string>& registered);

// A server stream that ends at once with `status`.
template <class Response>
class FailedStream final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit FailedStream(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// Base of kbitd's services: GrpcService is the generated service class (v1::ModelService, ...).
// The derived class calls CheckParsing once per method in its constructor.
template <class GrpcService>
class ParseCheckedService : public GrpcService::CallbackService {
 public:
  // OK once CheckParsing was called, with matching types, for every method of the service; the
  // daemon refuses to start otherwise, so a new RPC cannot bypass the check.
  absl::Status RegistrationStatus() const {
    if (!status_.ok()) return status_;
    return CheckAllMethodsRegistered(GrpcService::service_full_name(), registered_);
  }

 protected:
  template <class Self, class Request, class Response>
  void CheckParsing(const std::string& method,
                    grpc::ServerUnaryReactor* (Self::*handler)(grpc::CallbackServerContext*,
                                                               const Request*, Response*)) {
    absl::StatusOr<int> index = Register<Request, Response>(method, /*server_streaming=*/false);
    if (!index.ok()) return;
    Self* self = static_cast<Self*>(this);
    this->MarkMethodCallback(
        *index, new grpc::internal::CallbackUnaryHandler<ParsedRequest<Request>, Response>(
                    [self, handler](grpc::CallbackServerContext* context,
                                    const ParsedRequest<Request>* request, Response* response) {
                      if (!request->status.ok()) return FinishUnary(context, request->status);
                      return (self->*handler)(context, &request->message, response);
                    }));
  }

  template <class Self, class Request, class Response>
  void CheckParsing(const std::string& method, grpc::ServerWriteReactor<Response>* (Self::*handler)(
                                                   grpc::CallbackServerContext*, const Request*)) {
    absl::StatusOr<int> index = Register<Request, Response>(method, /*server_streaming=*/true);
    if (!index.ok()) return;
    Self* self = static_cast<Self*>(this);
    this->MarkMethodCallback(
        *index,
        new grpc::internal::CallbackServerStreamingHandler<ParsedRequest<Request>, Response>(
            [self, handler](
                grpc::CallbackServerContext* context,
                const ParsedRequest<Request>* request) -> grpc::ServerWriteReactor<Response>* {
              if (!request->status.ok()) return new FailedStream<Response>(request->status);
              return (self->*handler)(context, &request->message);
            }));
  }

 private:
  template <class Request, class Response>
  absl::StatusOr<int> Register(const std::string& method, bool server_streaming) {
    absl::StatusOr<int> index =
        MethodIndex(GrpcService::service_full_name(), method, *Request::descriptor(),
                    *Response::descriptor(), server_streaming);
    if (index.ok()) {
      registered_.insert(method);
    } else if (status_.ok()) {
      status_ = index.status();
    }
    return index;
  }

  absl::Status status_;
  std::set<std::string> registered_;
};

}  // namespace kbitd::server

namespace grpc {

// Never fails, so that gRPC hands every request to the handler, which answers a parse error
// itself (see the top of this file).
template <class Message>
class SerializationTraits<kbitd::server::ParsedRequest<Message>, void> {
 public:
  static Status Deserialize(ByteBuffer* buffer, kbitd::server::ParsedRequest<Message>* request) {
    request->status = kbitd::server::ParseRequest(buffer, &request->message);
    return Status::OK;
  }
};

}  // namespace grpc
