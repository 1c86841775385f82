#include "runtime/checkpoint/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;

std::string Frame(const std::string& header, const std::string& data, uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}
// A file whose header length field is the header's real length.
std::string Frame(const std::string& header, const std::string& data = "") {
  return Frame(header, data, header.size());
}

std::string ErrorOf(const std::string& file) {
  auto header = ParseSafetensorsHeader(file, "bad.safetensors");
  if (header.ok()) return "OK";
  return std::string(header.status().message());
}

std::string DataPath(const std::string& name) {
  return std::string(KBITD_TEST_DATA_DIR) + "/safetensors/" + name;
}

const char kTwoTensors[] = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";

TEST(SafetensorsHeaderTest, AcceptsAWellFormedFile) {
  auto header = ParseSafetensorsHeader(Frame(kTwoTensors, std::string(11, 'x')), "f");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 2u);
  EXPECT_EQ(header->tensors[0].name, "a");
  EXPECT_EQ(header->tensors[0].dtype, ScalarType::kFloat32);
  EXPECT_EQ(header->tensors[1].begin, 8u);
  EXPECT_EQ(header->tensors[1].end, 11u);
  EXPECT_EQ(header->data_start(), 8 + sizeof(kTwoTensors) - 1);
}

TEST(SafetensorsHeaderTest, SortsTensorsByOffsetWhateverTheJsonOrder) {
  const std::string json = R"({"late":{"dtype":"U8","shape":[1],"data_offsets":[4,5]},)"
                           R"("early":{"dtype":"I32","shape":[],"data_offsets":[0,4]}})";
  auto header = ParseSafetensorsHeader(Frame(json, "abcde"), "f");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors[0].name, "early");
  EXPECT_TRUE(header->tensors[0].shape.empty());
  EXPECT_EQ(header->tensors[0].NumElements(), 1);
}

TEST(SafetensorsHeaderTest, AcceptsWhitespacePaddingEmptyAndZeroSizedTensors) {
  // The reference accepts leading/trailing whitespace (writers pad to alignment).
  EXPECT_EQ(ErrorOf(Frame(std::string("  {}    "))), "OK");
  EXPECT_EQ(ErrorOf(Frame(R"({"__metadata__":{"k":"v"}})")), "OK");
  EXPECT_EQ(ErrorOf(Frame(R"({"z":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},)"
                          R"("x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})",
                          "ab")),
            "OK");
  // Sub-byte dtypes are fine when they fill whole bytes; valid but unsupported dtypes parse.
  auto header = ParseSafetensorsHeader(
      Frame(R"({"q":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", "ab"), "f");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_FALSE(header->tensors[0].dtype.has_value());
  EXPECT_EQ(header->tensors[0].dtype_name, "F4");
}

TEST(SafetensorsHeaderTest, ReadsMetadataInOrder) {
  auto header = ParseSafetensorsHeader(Frame(R"({"__metadata__":{"z":"1","a":"2"}})"), "f");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->metadata.size(), 2u);
  EXPECT_EQ(header->metadata[0].first, "z");
  EXPECT_EQ(header->metadata[1].second, "2");
}

// Vectors ported from safetensors/src/tensor.rs tests plus known attacks on model-file parsers:
// oversized header lengths, offsets past the end, overlapping or gapped data, trailing bytes
// (polyglot files, Trail of Bits' 2023 safetensors audit).
TEST(SafetensorsHeaderTest, RejectsFramingErrors) {
  EXPECT_THAT(ErrorOf(""), HasSubstr("too short"));
  EXPECT_THAT(ErrorOf("1234567"), HasSubstr("too short"));
  EXPECT_THAT(ErrorOf(Frame("{}", "", 0xffffff000000003cull)), HasSubstr("exceeds the limit"));
  EXPECT_THAT(ErrorOf(Frame("", "", 60)), HasSubstr("runs past the end"));
  EXPECT_THAT(ErrorOf(Frame("{}", "", 100'000'001)), HasSubstr("exceeds the limit"));
  EXPECT_THAT(ErrorOf(Frame("\xff")), HasSubstr("UTF-8"));
  EXPECT_THAT(ErrorOf(Frame("{")), HasSubstr("not valid JSON"));
  EXPECT_THAT(ErrorOf(Frame("[]")), HasSubstr("must be a JSON object"));
  EXPECT_THAT(ErrorOf(Frame(R"({"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}})")),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(ErrorOf(Frame(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                            R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                            "xy")),
              HasSubstr("not valid JSON"));  // duplicate key
}

TEST(SafetensorsHeaderTest, RejectsBadTensorEntries) {
  auto entry = [](const std::string& body, const std::string& data = "") {
    return ErrorOf(Frame("{\"t\":" + body + "}", data));
  };
  EXPECT_THAT(entry(R"({"dtype":"F17","shape":[1],"data_offsets":[0,4]})", "abcd"),
              HasSubstr("unknown dtype \"F17\""));
  EXPECT_THAT(entry(R"({"dtype":7,"shape":[1],"data_offsets":[0,4]})", "abcd"),
              HasSubstr("\"dtype\" must be a string"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[-1],"data_offsets":[0,0]})"),
              HasSubstr("non-negative"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1.5],"data_offsets":[0,0]})"),
              HasSubstr("non-negative"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[2,18446744073709551614],"data_offsets":[0,0]})"),
              HasSubstr("non-negative integers that fit in int64"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[2,9223372036854775807],"data_offsets":[0,0]})"),
              HasSubstr("overflows"));
  EXPECT_THAT(entry(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]})"),
              HasSubstr("overflows"));
  EXPECT_THAT(entry(R"({"dtype":"F4","shape":[3],"data_offsets":[0,1]})", "a"),
              HasSubstr("whole bytes"));
  EXPECT_THAT(entry(R"({"dtype":"I32","shape":[2,2],"data_offsets":[0,4]})", "abcd"),
              HasSubstr("span 4 bytes but shape and dtype need 16"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[1,0]})"),
              HasSubstr("end before they begin"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0]})"), HasSubstr("[begin, end]"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})", "a"),
              HasSubstr("[begin, end]"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1]})", "a"), HasSubstr("needs"));
  EXPECT_THAT(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1})", "a"),
              HasSubstr("unknown field \"x\""));
  EXPECT_THAT(entry(R"([1])"), HasSubstr("must be a JSON object"));
  EXPECT_THAT(ErrorOf(Frame(R"({"__metadata__":{"k":1}})")), HasSubstr("must be a string"));
  EXPECT_THAT(ErrorOf(Frame(R"({"__metadata__":[]})")), HasSubstr("must be a JSON object"));
}

TEST(SafetensorsHeaderTest, RejectsLayoutErrorsNamingTheTensor) {
  auto layout = [](const std::string& a, const std::string& b, const std::string& data) {
    return ErrorOf(Frame(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":)" + a +
                             R"(},"b":{"dtype":"U8","shape":[2],"data_offsets":)" + b + "}}",
                         data));
  };
  EXPECT_EQ(layout("[0,2]", "[2,4]", "abcd"), "OK");
  EXPECT_THAT(layout("[0,2]", "[1,3]", "abc"),
              HasSubstr("tensor \"b\": data_offsets [1, 3] overlap"));
  EXPECT_THAT(layout("[0,2]", "[3,5]", "abcde"),
              HasSubstr("tensor \"b\": data_offsets [3, 5] leave a gap"));
  EXPECT_THAT(layout("[1,3]", "[3,5]", "abcde"), HasSubstr("tensor \"a\""));  // first not at 0
  EXPECT_THAT(layout("[0,2]", "[2,4]", "abcd-extra_bogus_data_for_polyglot_file"),
              HasSubstr("trailing bytes"));
  EXPECT_THAT(layout("[0,2]", "[2,4]", "ab"), HasSubstr("truncated"));
  EXPECT_THAT(layout("[0,2]", "[9223372036854775800,9223372036854775802]", "abcd"),
              HasSubstr("leave a gap"));
  EXPECT_THAT(ErrorOf(Frame("{}", "x")), HasSubstr("trailing bytes"));
  EXPECT_THAT(layout("[0,2]", "[1,3]", "abc"), HasSubstr("bad.safetensors: "));
}

TEST(SafetensorsHeaderTest, HonoursACustomHeaderLimit) {
  SafetensorsLimits limits;
  limits.max_header_bytes = 4;
  EXPECT_FALSE(ParseSafetensorsHeader(Frame("{}   "), "f", limits).ok());
  EXPECT_TRUE(ParseSafetensorsHeader(Frame("{}  "), "f", limits).ok());
}

TEST(SafetensorsFileTest, ReadsAFileWrittenByPythonSafetensors) {
  auto file = SafetensorsFile::Open(DataPath("py_basic.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.TensorNames(),
            (std::vector<std::string>{"a", "b", "c", "d", "e", "empty", "f", "g", "h", "i"}));
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.metadata()[0], (std::pair<std::string, std::string>{"format", "pt"}));

  auto a = f.Get("a");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dtype, ScalarType::kFloat32);
  EXPECT_EQ(std::vector<int64_t>(a->shape.begin(), a->shape.end()), (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(a->data.size(), 24u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(LoadAsFloat(a->data.data(), a->dtype, i), 0.5f * i);

  auto b = f.Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype, ScalarType::kFloat16);
  EXPECT_EQ(LoadAsFloat(b->data.data(), b->dtype, 1), -2.0f);
  EXPECT_EQ(LoadAsFloat(b->data.data(), b->dtype, 3), 65504.0f);

  auto c = f.Get("c");
  ASSERT_TRUE(c.ok());
  int64_t c1;
  std::memcpy(&c1, c->data.data() + 8, 8);
  EXPECT_EQ(c1, int64_t{1} << 40);
  EXPECT_EQ(f.Get("e")->dtype, ScalarType::kBool);
  EXPECT_EQ(static_cast<int8_t>(f.Get("f")->data[0]), -128);
  EXPECT_TRUE(f.Get("g")->shape.empty());
  EXPECT_EQ(f.Get("g")->NumElements(), 1);
  EXPECT_EQ(f.Get("empty")->NumElements(), 0);
  EXPECT_TRUE(f.Get("empty")->data.empty());
  EXPECT_EQ(f.Get("h")->dtype, ScalarType::kFloat64);
  EXPECT_EQ(f.Get("i")->dtype, ScalarType::kInt16);
  for (const auto& name : f.TensorNames()) EXPECT_TRUE(f.Get(name)->IsAligned()) << name;

  auto missing = f.Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("py_basic.safetensors: no tensor named \"nope\""));
}

TEST(SafetensorsFileTest, UnsupportedDtypeFailsOnlyForThatTensor) {
  auto file = SafetensorsFile::Open(DataPath("py_unsupported_dtype.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->Get("ok").ok());
  auto u = (*file)->Get("u");
  EXPECT_FALSE(u.ok());
  EXPECT_THAT(u.status().message(), HasSubstr("tensor \"u\" has dtype U16"));
}

TEST(SafetensorsFileTest, OpenErrorsNameThePath) {
  const std::string dir = testing::TempDir() + "/safetensors_file_test";
  std::filesystem::create_directories(dir);
  auto missing = SafetensorsFile::Open(dir + "/missing.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing.safetensors"));
  EXPECT_THAT(SafetensorsFile::Open(dir).status().message(), HasSubstr("not a regular file"));

  const std::string truncated = dir + "/truncated.safetensors";
  std::ifstream in(DataPath("py_basic.safetensors"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() - 3);
  auto bad = SafetensorsFile::Open(truncated);
  EXPECT_THAT(bad.status().message(), HasSubstr("truncated.safetensors: tensors need"));
  std::ofstream(truncated, std::ios::binary | std::ios::trunc);  // empty file
  EXPECT_THAT(SafetensorsFile::Open(truncated).status().message(), HasSubstr("too short"));
}

}  // namespace
}  // namespace kbitd::runtime
