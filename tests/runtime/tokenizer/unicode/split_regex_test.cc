// Expected splits were checked against Hugging Face `tokenizers` (Oniguruma) with
// pre_tokenizers.Split(Regex(pattern), "isolated").
#include "runtime/tokenizer/unicode/split_regex.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kGpt2[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr char kLlama3[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> Matches(const std::string& pattern, const std::string& text) {
  auto re = SplitRegex::Compile(pattern);
  EXPECT_TRUE(re.ok()) << re.status();
  std::vector<SplitRegex::Match> found;
  if (re.ok()) re->FindAll(text, found);
  std::vector<std::string> out;
  for (const auto& [a, b] : found) out.push_back(text.substr(a, b - a));
  return out;
}

TEST(SplitRegexTest, Gpt2Pattern) {
  EXPECT_THAT(
      Matches(kGpt2, "Hello world, it's   3.14 ok  \n"),
      ElementsAre("Hello", " world", ",", " it", "'s", "  ", " 3", ".", "14", " ok", "  \n"));
  EXPECT_THAT(Matches(kGpt2, "I'M"), ElementsAre("I", "'", "M"));  // case-sensitive here
  EXPECT_THAT(Matches(kGpt2, "naïve 東京"), ElementsAre("naïve", " 東京"));
}

TEST(SplitRegexTest, Llama3Pattern) {
  EXPECT_THAT(Matches(kLlama3, "I'M 12345 x\r\n\n  y"),
              ElementsAre("I", "'M", " ", "123", "45", " x", "\r\n\n", " ", " y"));
  // U+017F LATIN SMALL LETTER LONG S case-folds to 's'.
  EXPECT_THAT(Matches(kLlama3, "a'\u017F"), ElementsAre("a", "'\u017F"));
  EXPECT_THAT(Matches(kLlama3, "(x) ...\n"), ElementsAre("(x", ")", " ...\n"));
}

TEST(SplitRegexTest, Constructs) {
  EXPECT_THAT(Matches("a{2,3}?", "aaaaa"), ElementsAre("aa", "aa"));
  EXPECT_THAT(Matches("a{2,}", "aaaaa a"), ElementsAre("aaaaa"));
  EXPECT_THAT(Matches("(?=b)|x", "abx"), ElementsAre("", "x"));
  EXPECT_THAT(Matches(R"([\p{Lu}\d-]+)", "abC-1d"), ElementsAre("C-1"));
  EXPECT_THAT(Matches(R"(\x41\u00e9[^\x00-\x7f])", "Aéé"), ElementsAre("Aéé"));
  EXPECT_THAT(Matches(R"(^\w+$)", "ab\ncd"), ElementsAre("ab", "cd"));
  EXPECT_THAT(Matches(R"((?i)[a-c]+)", "xAbCd"), ElementsAre("AbC"));
  EXPECT_THAT(Matches(R"(\P{L}+)", "ab12!c"), ElementsAre("12!"));
}

TEST(SplitRegexTest, RejectsUnsupportedSyntax) {
  for (const char* bad :
       {"(?<=a)b", "a++", "\\1", "[[a]]", "(a", "a)", "*a", "\\p{Han}", "(a*)*", "a{3,2}"}) {
    auto re = SplitRegex::Compile(bad);
    EXPECT_FALSE(re.ok()) << bad;
    EXPECT_THAT(std::string(re.status().message()), HasSubstr("regex")) << bad;
  }
}

}  // namespace
}  // namespace kbitd::runtime
