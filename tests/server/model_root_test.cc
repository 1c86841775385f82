#include "server/model_root.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

namespace fs = std::filesystem;

class ModelRootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::path(::testing::TempDir()) / ("model_root_test_" + std::to_string(getpid()));
    fs::remove_all(base_);
    fs::create_directories(base_ / "root/tiny");
    fs::create_directories(base_ / "outside");
    std::ofstream(base_ / "root/tiny/config.json") << "{}";
    std::ofstream(base_ / "outside/secret") << "x";
    fs::create_directory_symlink(base_ / "outside", base_ / "root/escape");
    fs::create_directory_symlink(base_ / "root/tiny", base_ / "root/alias");
    auto root = ModelRoot::Create((base_ / "root").string());
    ASSERT_TRUE(root.ok()) << root.status();
    root_ = std::make_unique<ModelRoot>(*root);
  }
  void TearDown() override { fs::remove_all(base_); }

  fs::path base_;
  std::unique_ptr<ModelRoot> root_;
};

TEST_F(ModelRootTest, ResolvesPathsInside) {
  auto tiny = root_->Resolve("tiny");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(*tiny, fs::canonical(base_ / "root/tiny").string());
  EXPECT_EQ(*root_->Resolve("tiny/config.json"), fs::canonical(base_ / "root/tiny/config.json"));
  // A symlink that stays inside is fine and resolves to its target.
  EXPECT_EQ(*root_->Resolve("alias"), *tiny);
  EXPECT_EQ(*root_->Resolve("./tiny/"), *tiny);
}

TEST_F(ModelRootTest, RefusesEscapes) {
  EXPECT_EQ(root_->Resolve("../outside").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(root_->Resolve("tiny/../../outside").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(root_->Resolve("/etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(root_->Resolve("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(root_->Resolve(std::string("tiny\0x", 6)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto symlink = root_->Resolve("escape/secret");
  EXPECT_EQ(symlink.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(symlink.status().message()),
              ::testing::HasSubstr("outside the model root"));
  EXPECT_EQ(root_->Resolve("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelRootTest, ResolveNewChecksParentAndExistence) {
  auto fresh = root_->ResolveNew("tiny-export");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(*fresh, fs::canonical(base_ / "root").string() + "/tiny-export");
  EXPECT_EQ(root_->ResolveNew("tiny").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(root_->ResolveNew("escape/new").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(root_->ResolveNew("../new").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(root_->ResolveNew("nope/new").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelRootCreateTest, RootMustBeAnExistingFolder) {
  EXPECT_EQ(ModelRoot::Create("/nonexistent/kbitd/root").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(ModelRoot::Create("").ok());
}

}  // namespace
}  // namespace kbitd::server
