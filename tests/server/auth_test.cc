#include "server/auth.h"

#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

TEST(AdminAuthTest, NeedsTheRightBearerToken) {
  AdminAuth auth("s3cret", /*allow_unauthenticated=*/false);
  const std::string right = "Bearer s3cret", wrong = "Bearer s3cre", other = "Basic s3cret",
                    longer = "Bearer s3cret2";
  EXPECT_TRUE(auth.CheckHeader(&right).ok());
  EXPECT_EQ(auth.CheckHeader(nullptr).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader(&wrong).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader(&other).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader(&longer).code(), absl::StatusCode::kUnauthenticated);
}

TEST(AdminAuthTest, NoTokenDisablesAdminUnlessAllowed) {
  const std::string any = "Bearer x";
  EXPECT_EQ(AdminAuth("", false).CheckHeader(&any).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(AdminAuth("", true).CheckHeader(nullptr).ok());
}

}  // namespace
}  // namespace kbitd::server
