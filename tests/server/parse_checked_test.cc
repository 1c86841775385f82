// The parse-failure explainer against every string field of every request of kbitd's services,
// enumerated from the descriptors (a new RPC or field is covered without editing this file), and
// the services' registration of the check for every RPC.
#include "server/parse_checked.h"

#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/dynamic_message.h"
#include "gtest/gtest.h"
#include "kbitd/v1/inference_service.grpc.pb.h"
#include "kbitd/v1/model_service.grpc.pb.h"
#include "server/inference_service.h"
#include "server/model_service.h"

namespace kbitd::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using ::testing::HasSubstr;

std::string Varint(uint64_t n) {
  std::string out;
  do {
    out.push_back(static_cast<char>((n & 0x7f) | (n > 0x7f ? 0x80 : 0)));
    n >>= 7;
  } while (n != 0);
  return out;
}

std::string LengthDelimited(int number, const std::string& payload) {
  return Varint(static_cast<uint64_t>(number) << 3 | 2) + Varint(payload.size()) + payload;
}

struct Case {
  std::string field;  // the name the explainer must give
  std::string bytes;  // a `type` message whose `field` holds `bad`
};

// Every string field reachable from `type`; repeated ones get a valid element before the bad one,
// so the index is checked too.
void CollectCases(const Descriptor& type, const std::string& prefix, const std::string& bad,
                  int depth, std::vector<Case>* cases) {
  for (int i = 0; i < type.field_count(); ++i) {
    const FieldDescriptor& field = *type.field(i);
    const std::string name = prefix + "." + field.name();
    if (field.type() == FieldDescriptor::TYPE_STRING) {
      if (field.is_repeated()) {
        cases->push_back({name + "[1]", LengthDelimited(field.number(), "ok") +
                                            LengthDelimited(field.number(), bad)});
      } else {
        cases->push_back({name, LengthDelimited(field.number(), bad)});
      }
    } else if (field.type() == FieldDescriptor::TYPE_MESSAGE && depth < 4) {
      std::vector<Case> inner;
      CollectCases(*field.message_type(), name + (field.is_repeated() ? "[0]" : ""), bad, depth + 1,
                   &inner);
      for (Case& c : inner) {
        cases->push_back({c.field, LengthDelimited(field.number(), c.bytes)});
      }
    }
  }
}

std::vector<const Descriptor*> RequestTypes() {
  std::vector<const Descriptor*> types;
  for (const google::protobuf::FileDescriptor* file :
       {v1::GenerateRequest::descriptor()->file(), v1::LoadModelRequest::descriptor()->file()}) {
    for (int s = 0; s < file->service_count(); ++s) {
      for (int m = 0; m < file->service(s)->method_count(); ++m) {
        types.push_back(file->service(s)->method(m)->input_type());
      }
    }
  }
  return types;
}

// Whether protobuf itself (the generated parser gRPC uses) accepts `bytes` as a `type`.
bool ProtobufParses(const Descriptor& type, const std::string& bytes) {
  const google::protobuf::Message* prototype =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(&type);
  std::unique_ptr<google::protobuf::Message> message(prototype->New());
  return message->ParseFromString(bytes);
}

TEST(ExplainParseFailureTest, NamesEveryStringFieldOfEveryRequest) {
  const std::vector<const Descriptor*> types = RequestTypes();
  ASSERT_GE(types.size(), 9u);
  int checked = 0;
  for (const Descriptor* type : types) {
    std::vector<Case> cases;
    CollectCases(*type, type->full_name(), "ab\xff\xfe", 0, &cases);
    for (const Case& c : cases) {
      SCOPED_TRACE(c.field);
      // The premise: protobuf refuses the bytes (so gRPC would answer UNIMPLEMENTED).
      EXPECT_FALSE(ProtobufParses(*type, c.bytes));
      absl::Status status = ExplainParseFailure(*type, c.bytes);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(status.message(),
                "field " + c.field + " is not valid UTF-8 (byte 0xff at offset 2)");
      ++checked;
    }
  }
  // The nested ones (quantization, placement maps) are in: well over one per request type.
  EXPECT_GE(checked, 20);
}

TEST(ExplainParseFailureTest, AgreesWithProtobufOnWhatIsInvalid) {
  const Descriptor& type = *v1::GetModelRequest::descriptor();
  // Overlong, surrogate, past U+10FFFF, truncated, lone continuation.
  for (const std::string bad :
       {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"}) {
    const std::string bytes = LengthDelimited(1, "x" + bad);
    EXPECT_FALSE(ProtobufParses(type, bytes));
    EXPECT_THAT(std::string(ExplainParseFailure(type, bytes).message()),
                HasSubstr("field kbitd.v1.GetModelRequest.name is not valid UTF-8"));
  }
  EXPECT_TRUE(ProtobufParses(type, LengthDelimited(1, "caf\xc3\xa9 \xf0\x9f\x98\x80")));
}

TEST(ExplainParseFailureTest, MalformedMessagesAreNamed) {
  const Descriptor& generate = *v1::GenerateRequest::descriptor();
  const std::string truncated =
      "\x0a\x05"
      "ab";  // field 1 announces 5 bytes, 2 follow
  absl::Status top = ExplainParseFailure(generate, truncated);
  EXPECT_EQ(top.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(top.message(), "kbitd.v1.GenerateRequest could not be parsed (malformed protobuf)");
  absl::Status nested = ExplainParseFailure(generate, LengthDelimited(5, truncated));
  EXPECT_EQ(nested.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nested.message(),
            "field kbitd.v1.GenerateRequest.sampling is not a valid kbitd.v1.SamplingParams "
            "message (malformed protobuf)");
  // Tags protobuf skips as unknown (a string field sent as a varint, an unknown number) do not
  // count, but a bad field after them does.
  const std::string skipped = "\x08\x01" + LengthDelimited(99, "\xff") + LengthDelimited(6, "\xff");
  EXPECT_FALSE(ProtobufParses(generate, skipped));
  EXPECT_THAT(std::string(ExplainParseFailure(generate, skipped).message()),
              HasSubstr("field kbitd.v1.GenerateRequest.stop[0] is not valid UTF-8"));
}

TEST(ParseRequestTest, ParsesValidBytesAndExplainsInvalidOnes) {
  v1::GenerateRequest want;
  want.set_model("tiny");
  want.add_stop("\n");
  want.set_max_new_tokens(3);
  grpc::Slice valid_slice(want.SerializeAsString());
  grpc::ByteBuffer valid(&valid_slice, 1);
  v1::GenerateRequest got;
  ASSERT_TRUE(ParseRequest(&valid, &got).ok());
  EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString());

  grpc::Slice bad_slice(LengthDelimited(1, "tiny") + LengthDelimited(6, "a\xfe"));
  grpc::ByteBuffer bad(&bad_slice, 1);
  absl::Status status = ParseRequest(&bad, &got);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "field kbitd.v1.GenerateRequest.stop[0] is not valid UTF-8 (byte 0xfe at offset 1)");
}

TEST(ParseCheckedServiceTest, EveryRpcIsRegistered) {
  // The handlers are never called here, so the services need no registry.
  ModelService models(nullptr, nullptr);
  InferenceService inference(nullptr, nullptr, v1::LimitsConfig());
  EXPECT_TRUE(models.RegistrationStatus().ok()) << models.RegistrationStatus();
  EXPECT_TRUE(inference.RegistrationStatus().ok()) << inference.RegistrationStatus();
}

TEST(ParseCheckedServiceTest, MissingOrMismatchedMethodsAreReported) {
  EXPECT_THAT(
      std::string(CheckAllMethodsRegistered("kbitd.v1.InferenceService", {"Generate", "Tokenize"})
                      .message()),
      HasSubstr("kbitd.v1.InferenceService.Detokenize"));
  EXPECT_EQ(MethodIndex("kbitd.v1.InferenceService", "Tokenize", *v1::TokenizeRequest::descriptor(),
                        *v1::TokenizeResponse::descriptor(), false)
                .value_or(-1),
            1);
  EXPECT_FALSE(MethodIndex("kbitd.v1.InferenceService", "Tokenize",
                           *v1::DetokenizeRequest::descriptor(),
                           *v1::TokenizeResponse::descriptor(), false)
                   .ok());
  EXPECT_FALSE(MethodIndex("kbitd.v1.InferenceService", "Generate",
                           *v1::GenerateRequest::descriptor(), *v1::GenerateResponse::descriptor(),
                           false)
                   .ok());
  EXPECT_FALSE(MethodIndex("kbitd.v1.InferenceService", "Nope", *v1::TokenizeRequest::descriptor(),
                           *v1::TokenizeResponse::descriptor(), false)
                   .ok());
}

}  // namespace
}  // namespace kbitd::server
