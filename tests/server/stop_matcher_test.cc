#include "server/stop_matcher.h"

#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

TEST(StopMatcherTest, PassesTextThroughWithoutStops) {
  StopMatcher matcher({});
  EXPECT_EQ(matcher.Append("hello"), "hello");
  EXPECT_EQ(matcher.Append(" world"), " world");
  EXPECT_FALSE(matcher.stopped());
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopMatcherTest, FindsAStopSplitAcrossPiecesAndHidesIt) {
  StopMatcher matcher({"END", "\n\n"});
  EXPECT_EQ(matcher.Append("abc E"), "abc ");  // "E" may start "END"
  EXPECT_EQ(matcher.Append("N"), "");
  EXPECT_EQ(matcher.Append("Dxyz"), "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.Append("more"), "");
}

TEST(StopMatcherTest, ReleasesHeldTextWhenThePrefixBreaks) {
  StopMatcher matcher({"END"});
  EXPECT_EQ(matcher.Append("EN"), "");
  EXPECT_EQ(matcher.Append("D?"), "");
  EXPECT_TRUE(matcher.stopped());

  StopMatcher other({"END"});
  EXPECT_EQ(other.Append("EN"), "");
  EXPECT_EQ(other.Append("Z"), "ENZ");
  EXPECT_EQ(other.Append("E"), "");
  EXPECT_EQ(other.Flush(), "E");
  EXPECT_FALSE(other.stopped());
}

TEST(StopMatcherTest, EarliestStopWinsAndTextBeforeItIsKept) {
  StopMatcher matcher({"cd", "b"});
  EXPECT_EQ(matcher.Append("abcd"), "a");
  EXPECT_TRUE(matcher.stopped());
}

TEST(StopMatcherTest, MultiByteStopStrings) {
  StopMatcher matcher({"\xe2\x80\x94stop"});  // em dash + "stop"
  EXPECT_EQ(matcher.Append("x\xe2\x80\x94"), "x");
  EXPECT_EQ(matcher.Append("st"), "");
  EXPECT_EQ(matcher.Append("op!"), "");
  EXPECT_TRUE(matcher.stopped());
}

}  // namespace
}  // namespace kbitd::server
