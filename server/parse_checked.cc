#include "server/parse_checked.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/utf8.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/support/proto_buffer_reader.h"

namespace kbitd::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// Deeper nesting than this is refused by protobuf's parser as well (its default recursion limit).
constexpr int kMaxDepth = 100;

// Walks `bytes` as a `type` message whose fields are named from `path`. Tags protobuf would skip
// as unknown (unknown numbers, mismatched wire types) are skipped here too: they cannot fail a
// parse, only the fields it reads can.
absl::Status FindBadField(const Descriptor& type, std::string_view bytes, const std::string& path,
                          int depth) {
  UnknownFieldSet fields;
  if (depth > kMaxDepth) {
    return absl::InvalidArgumentError(absl::StrCat("field ", path, " nests too deeply"));
  }
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        depth == 0 ? absl::StrCat(type.full_name(), " could not be parsed (malformed protobuf)")
                   : absl::StrCat("field ", path, " is not a valid ", type.full_name(),
                                  " message (malformed protobuf)"));
  }
  // Per field number, the index of the next repeated element (of the elements protobuf reads).
  std::map<int, int> occurrences;
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& field = fields.field(i);
    const FieldDescriptor* descriptor = type.FindFieldByNumber(field.number());
    if (descriptor == nullptr || field.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const int index = occurrences[field.number()]++;
    std::string name = absl::StrCat(path, ".", descriptor->name());
    if (descriptor->is_repeated()) absl::StrAppend(&name, "[", index, "]");
    const std::string& value = field.length_delimited();
    if (descriptor->type() == FieldDescriptor::TYPE_STRING) {
      if (std::optional<size_t> at = FindInvalidUtf8(value)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("field %s is not valid UTF-8 (byte 0x%02x at offset %d)", name,
                            static_cast<unsigned char>(value[*at]), *at));
      }
    } else if (descriptor->type() == FieldDescriptor::TYPE_MESSAGE) {
      absl::Status nested = FindBadField(*descriptor->message_type(), value, name, depth + 1);
      if (!nested.ok()) return nested;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExplainParseFailure(const Descriptor& type, std::string_view bytes) {
  absl::Status status = FindBadField(type, bytes, type.full_name(), 0);
  if (!status.ok()) return status;
  // Every field reads fine on its own (e.g. the nesting limit of the parser was hit).
  return absl::InvalidArgumentError(absl::StrCat(type.full_name(), " could not be parsed"));
}

absl::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message) {
  absl::Status status;
  {
    grpc::ProtoBufferReader reader(buffer);
    if (!reader.status().ok()) {
      status = absl::InternalError(absl::StrCat("reading the request of ",
                                                message->GetDescriptor()->full_name(), ": ",
                                                reader.status().error_message()));
    } else if (!message->ParseFromZeroCopyStream(&reader)) {
      // The failure path only: copy the bytes out to walk them.
      grpc::Slice slice;
      status =
          buffer->DumpToSingleSlice(&slice).ok()
              ? ExplainParseFailure(
                    *message->GetDescriptor(),
                    std::string_view(reinterpret_cast<const char*>(slice.begin()), slice.size()))
              : absl::InvalidArgumentError(
                    absl::StrCat(message->GetDescriptor()->full_name(), " could not be parsed"));
    }
  }
  // The handler hands the buffer's ownership to the deserializer, as protobuf's does.
  buffer->Clear();
  return status;
}

absl::StatusOr<int> MethodIndex(const std::string& service, const std::string& method,
                                const Descriptor& request, const Descriptor& response,
                                bool server_streaming) {
  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  if (descriptor == nullptr) {
    return absl::InternalError(absl::StrCat("service ", service, " is not linked in"));
  }
  const google::protobuf::MethodDescriptor* rpc = descriptor->FindMethodByName(method);
  if (rpc == nullptr) {
    return absl::InternalError(absl::StrCat(service, " has no method ", method));
  }
  if (rpc->input_type() != &request || rpc->output_type() != &response ||
      rpc->server_streaming() != server_streaming || rpc->client_streaming()) {
    return absl::InternalError(
        absl::StrCat(rpc->full_name(), " is registered with a handler of other types"));
  }
  return rpc->index();
}

absl::Status CheckAllMethodsRegistered(const std::string& service,
                                       const std::set<std::string>& registered) {
  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  if (descriptor == nullptr) {
    return absl::InternalError(absl::StrCat("service ", service, " is not linked in"));
  }
  for (int i = 0; i < descriptor->method_count(); ++i) {
    if (!registered.count(descriptor->method(i)->name())) {
      return absl::InternalError(absl::StrCat(descriptor->method(i)->full_name(),
                                              " is served without the request parse check"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kbitd::server
