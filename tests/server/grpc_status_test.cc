#include "server/grpc_status.h"

#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

TEST(GrpcStatusTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const grpc::Status status = ToGrpcStatus(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "queue full");
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("x")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("x")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST(GrpcStatusTest, CapsLongMessagesOnACharacterBoundary) {
  std::string message(kMaxStatusMessageBytes - 1, 'a');
  message += "\xc3\xa9\xc3\xa9 and more";  // "éé" straddles the cap
  const grpc::Status status = ToGrpcStatus(absl::InvalidArgumentError(message));
  EXPECT_EQ(status.error_message(), std::string(kMaxStatusMessageBytes - 1, 'a') + "...");
}

}  // namespace
}  // namespace kbitd::server
