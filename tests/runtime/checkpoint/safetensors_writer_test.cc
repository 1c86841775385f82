#include "runtime/checkpoint/safetensors_writer.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string TempDir(const std::string& name) {
  std::string dir = testing::TempDir() + "/safetensors_writer_test_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

template <typename T>
std::span<const uint8_t> Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// The same tensors tools/golden/make_safetensors_fixtures.py gives Python's safetensors.
absl::Status AddBasicTensors(SafetensorsWriter& w) {
  std::vector<float> a = {0, 0.5, 1, 1.5, 2, 2.5};
  std::vector<uint16_t> b = {FloatToHalf(1), FloatToHalf(-2), FloatToHalf(0.25f),
                             FloatToHalf(65504)};
  std::vector<int64_t> c = {-1, int64_t{1} << 40};
  std::vector<uint8_t> d = {0, 1, 2, 3, 4};
  std::vector<uint8_t> e = {1, 0, 1};
  std::vector<int8_t> f = {-128, 127, 0, 5};
  std::vector<int32_t> g = {7};
  std::vector<double> h = {3.5};
  std::vector<int16_t> i = {-3, 300};
  // Added in a scrambled order: the layout must not depend on it.
  for (auto status : {
           w.Add("i", ScalarType::kInt16, {2}, Bytes(i)),
           w.Add("e", ScalarType::kBool, {3}, Bytes(e)),
           w.Add("a", ScalarType::kFloat32, {2, 3}, Bytes(a)),
           w.Add("empty", ScalarType::kFloat32, {0, 4}, {}),
           w.Add("c", ScalarType::kInt64, {2}, Bytes(c)),
           w.Add("b", ScalarType::kFloat16, {4}, Bytes(b)),
           w.Add("h", ScalarType::kFloat64, {1}, Bytes(h)),
           w.Add("d", ScalarType::kUInt8, {5}, Bytes(d)),
           w.Add("g", ScalarType::kInt32, {}, Bytes(g)),
           w.Add("f", ScalarType::kInt8, {2, 2}, Bytes(f)),
       }) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

TEST(SafetensorsWriterTest, WritesTheSameBytesAsPythonSafetensors) {
  const std::string path = TempDir("identical") + "/ours.safetensors";
  auto writer = SafetensorsWriter::Create(path, {{{"format", "pt"}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(AddBasicTensors(**writer).ok());
  EXPECT_FALSE(fs::exists(path));  // nothing at the path before Finish
  ASSERT_TRUE((*writer)->Finish().ok());
  const std::string ours = ReadBytes(path);
  const std::string reference =
      ReadBytes(std::string(KBITD_TEST_DATA_DIR) + "/safetensors/py_basic.safetensors");
  ASSERT_FALSE(reference.empty());
  EXPECT_EQ(ours, reference);
  EXPECT_EQ(fs::directory_iterator(fs::path(path).parent_path())->path(), path);  // no leftovers
}

TEST(SafetensorsWriterTest, RoundTripsThroughTheReaderWithAlignedData) {
  const std::string path = TempDir("roundtrip") + "/t.safetensors";
  std::vector<uint8_t> odd = {1, 2, 3};
  std::vector<uint16_t> bf16 = {FloatToBFloat16(1.5f), FloatToBFloat16(-7.0f)};
  std::vector<float> f32 = {1, 2, 3, 4};
  auto writer = SafetensorsWriter::Create(path, {});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Add("z.odd", ScalarType::kUInt8, {3}, Bytes(odd)).ok());
  ASSERT_TRUE((*writer)->Add("y.bf16", ScalarType::kBFloat16, {2, 1}, Bytes(bf16)).ok());
  ASSERT_TRUE((*writer)->Add("x.f32", ScalarType::kFloat32, {4}, Bytes(f32)).ok());
  EXPECT_EQ((*writer)->data_bytes(), 3u + 4u + 16u);
  ASSERT_TRUE((*writer)->Finish().ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().data_start() % 8, 0u);
  EXPECT_TRUE((*file)->metadata().empty());
  for (const auto& name : (*file)->TensorNames()) EXPECT_TRUE((*file)->Get(name)->IsAligned());
  auto y = (*file)->Get("y.bf16");
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(std::vector<int64_t>(y->shape.begin(), y->shape.end()), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(LoadAsFloat(y->data.data(), y->dtype, 1), -7.0f);
  auto x = (*file)->Get("x.f32");
  EXPECT_EQ(std::memcmp(x->data.data(), f32.data(), 16), 0);
  EXPECT_EQ(std::memcmp((*file)->Get("z.odd")->data.data(), odd.data(), 3), 0);
}

TEST(SafetensorsWriterTest, ReplacesAnExistingFileOnlyWhenFinished) {
  const std::string path = TempDir("replace") + "/t.safetensors";
  std::ofstream(path) << "old";
  {
    auto writer = SafetensorsWriter::Create(path, {});
    ASSERT_TRUE(writer.ok());
    std::vector<float> v = {1};
    ASSERT_TRUE((*writer)->Add("v", ScalarType::kFloat32, {1}, Bytes(v)).ok());
    // Destroyed without Finish: the old file stays and nothing else is left.
  }
  EXPECT_EQ(ReadBytes(path), "old");
  EXPECT_EQ(
      std::distance(fs::directory_iterator(fs::path(path).parent_path()), fs::directory_iterator()),
      1);
  auto writer = SafetensorsWriter::Create(path, {});
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
  EXPECT_FALSE((*writer)->Finish().ok());  // at most once
}

TEST(SafetensorsWriterTest, RejectsBadTensors) {
  const std::string path = TempDir("bad") + "/t.safetensors";
  auto writer = SafetensorsWriter::Create(path, {});
  ASSERT_TRUE(writer.ok());
  std::vector<float> v = {1, 2};
  SafetensorsWriter& w = **writer;
  ASSERT_TRUE(w.Add("v", ScalarType::kFloat32, {2}, Bytes(v)).ok());
  EXPECT_THAT(w.Add("v", ScalarType::kFloat32, {2}, Bytes(v)).message(),
              HasSubstr("tensor \"v\": added twice"));
  EXPECT_THAT(w.Add("w", ScalarType::kFloat32, {3}, Bytes(v)).message(),
              HasSubstr("has 8 bytes but shape and dtype need 12"));
  EXPECT_THAT(w.Add("w", ScalarType::kFloat32, {-2}, Bytes(v)).message(), HasSubstr("negative"));
  EXPECT_FALSE(w.Add("__metadata__", ScalarType::kFloat32, {2}, Bytes(v)).ok());
  EXPECT_FALSE(w.Add("", ScalarType::kFloat32, {2}, Bytes(v)).ok());
  EXPECT_FALSE(w.Add("\xff", ScalarType::kFloat32, {2}, Bytes(v)).ok());
  EXPECT_FALSE(SafetensorsWriter::Create("/nonexistent-dir/x.safetensors", {}).ok());
}

TEST(SafetensorsWriterTest, WriteSafetensorsWritesViews) {
  const std::string path = TempDir("views") + "/t.safetensors";
  std::vector<float> v = {4, 5};
  std::vector<int64_t> shape = {2};
  TensorView view{"w", ScalarType::kFloat32, shape, Bytes(v)};
  ASSERT_TRUE(WriteSafetensors(path, {view}, {{"k", "v"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata()[0].second, "v");
  EXPECT_EQ(LoadAsFloat((*file)->Get("w")->data.data(), ScalarType::kFloat32, 1), 5.0f);
}

}  // namespace
}  // namespace kbitd::runtime
