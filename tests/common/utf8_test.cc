#include "common/utf8.h"

#include "gtest/gtest.h"

namespace kbitd {
namespace {

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  // Expected values are Python's bytes.decode("utf-8", "replace") (same policy as Rust's
  // String::from_utf8_lossy).
  EXPECT_EQ(Utf8Lossy("ok"), "ok");
  EXPECT_EQ(Utf8Lossy("\xE4\xBD"), "\uFFFD");  // truncated 3-byte sequence
  EXPECT_EQ(Utf8Lossy("\xE4\xBD"
                      "a"),
            "\uFFFD"
            "a");
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), "\uFFFD\uFFFD");            // overlong: two subparts
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), "\uFFFD");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98\x80"), "\U0001F600");
  EXPECT_EQ(Utf8Lossy("\x80\xFF"), "\uFFFD\uFFFD");
}

TEST(Utf8Test, FindsFirstInvalidByte) {
  EXPECT_EQ(FindInvalidUtf8("h\xC3\xA9llo"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("ab\xC3"), 2u);
  EXPECT_EQ(FindInvalidUtf8("a\xF5\x80\x80\x80"), 1u);
  std::string s;
  for (char32_t cp : {U'a', U'é', U'東', U'😀'}) AppendUtf8(cp, s);
  size_t pos = 0;
  std::u32string back;
  while (pos < s.size()) back += DecodeUtf8(s, pos);
  EXPECT_EQ(back, U"aé東😀");
}

}  // namespace
}  // namespace kbitd
