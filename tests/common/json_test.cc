#include "common/json.h"

#include <cmath>

#include "gtest/gtest.h"

namespace kbitd {
namespace {

TEST(JsonTest, ParsesNestedValuesInOrder) {
  auto v = ParseJson(R"( {"b": [1, 2.5, -3e2, true, null], "a": {"x": "y\u00e9\ud83d\ude00"}} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  EXPECT_EQ(v->object()[0].first, "b");
  EXPECT_EQ(v->object()[1].first, "a");
  const auto& arr = v->Find("b")->array();
  ASSERT_EQ(arr.size(), 5u);
  EXPECT_TRUE(arr[0].is_integer());
  EXPECT_EQ(arr[0].integer_value(), 1);
  EXPECT_FALSE(arr[1].is_integer());
  EXPECT_DOUBLE_EQ(arr[1].number_value(), 2.5);
  EXPECT_DOUBLE_EQ(arr[2].number_value(), -300);
  EXPECT_TRUE(arr[3].bool_value());
  EXPECT_TRUE(arr[4].is_null());
  EXPECT_EQ(v->Find("a")->Find("x")->string_value(), "y\xC3\xA9\xF0\x9F\x98\x80");
}

// integer_value() once converted the number's double even for an integer, and INT64_MAX's double
// (2^63) is out of int64's range: undefined behaviour, found by UBSan.
TEST(JsonTest, IntegerValueIsDefinedAtInt64sLimitsAndBeyond) {
  auto v = ParseJson("[9223372036854775807, -9223372036854775808, 1e300, -1e300, -2.75]");
  ASSERT_TRUE(v.ok()) << v.status();
  const auto& arr = v->array();
  EXPECT_TRUE(arr[0].is_integer());
  EXPECT_EQ(arr[0].integer_value(), INT64_MAX);
  EXPECT_TRUE(arr[1].is_integer());
  EXPECT_EQ(arr[1].integer_value(), INT64_MIN);
  EXPECT_FALSE(arr[2].is_integer());
  EXPECT_EQ(arr[2].integer_value(), INT64_MAX);
  EXPECT_EQ(arr[3].integer_value(), INT64_MIN);
  EXPECT_EQ(arr[4].integer_value(), -2);
  EXPECT_EQ(JsonValue::Number(NAN).integer_value(), 0);
}

TEST(JsonTest, RejectsMalformedInput) {
  for (const char* bad : {"", "{", "[1,]", "{\"a\":1,}", "{'a':1}", "01", "1.", "NaN", "[1] x",
                          "\"\\ud800\"", "\"a\x01\"", "{\"a\":1,\"a\":2}", "tru", "-", "1e"}) {
    EXPECT_FALSE(ParseJson(bad).ok()) << bad;
  }
}

TEST(JsonTest, RejectsInvalidUtf8AndDeepNesting) {
  EXPECT_FALSE(ParseJson("\"\xC0\xAF\"").ok());          // overlong
  EXPECT_FALSE(ParseJson("\"\xED\xA0\x80\"").ok());      // surrogate
  EXPECT_FALSE(ParseJson("\"\xF4\x90\x80\x80\"").ok());  // > U+10FFFF
  std::string deep(1000, '[');
  deep += std::string(1000, ']');
  auto status = ParseJson(deep).status();
  EXPECT_NE(status.message().find("nesting"), std::string::npos) << status;
}

TEST(JsonTest, DuplicateKeysCanBeAllowedLastWins) {
  JsonParseOptions options;
  options.allow_duplicate_keys = true;
  auto v = ParseJson(R"({"a":1,"a":2})", options);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->object().size(), 1u);
  EXPECT_EQ(v->Find("a")->integer_value(), 2);
}

TEST(JsonTest, WritesLikePythonJsonDumps) {
  JsonValue v = JsonValue::MakeObject();
  v.Set("quant_type", JsonValue::String("nf4"));
  v.Set("blocksize", JsonValue::Integer(64));
  v.Set("shape", JsonValue::MakeArray({JsonValue::Integer(4), JsonValue::Integer(8)}));
  v.Set("nested_offset", JsonValue::Number(0.01727294921875));
  v.Set("s", JsonValue::String("\xC3\xA9\n"));
  EXPECT_EQ(v.Write(), R"({"quant_type": "nf4", "blocksize": 64, "shape": [4, 8], )"
                       R"("nested_offset": 0.01727294921875, "s": "\u00e9\n"})");
  JsonValue::WriteOptions pretty;
  pretty.indent = 2;
  pretty.sort_keys = true;
  JsonValue small = JsonValue::MakeObject();
  small.Set("b", JsonValue::Bool(false));
  small.Set("a", JsonValue::MakeArray({JsonValue::Integer(1)}));
  EXPECT_EQ(small.Write(pretty), "{\n  \"a\": [\n    1\n  ],\n  \"b\": false\n}");
}

TEST(JsonTest, FormatsFloatsLikePythonRepr) {
  EXPECT_EQ(FormatPythonFloat(1.0), "1.0");
  EXPECT_EQ(FormatPythonFloat(6.0), "6.0");
  EXPECT_EQ(FormatPythonFloat(0.1), "0.1");
  EXPECT_EQ(FormatPythonFloat(1e-05), "1e-05");
  EXPECT_EQ(FormatPythonFloat(0.0001), "0.0001");
  EXPECT_EQ(FormatPythonFloat(1e16), "1e+16");
  EXPECT_EQ(FormatPythonFloat(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(FormatPythonFloat(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(FormatPythonFloat(static_cast<double>(0.1f)), "0.10000000149011612");
  EXPECT_EQ(FormatPythonFloat(123.456), "123.456");
}

}  // namespace
}  // namespace kbitd
