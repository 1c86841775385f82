// Expected strings are Python's unicodedata.normalize (Unicode 16 via unicodedata2); the parity
// test also checks NFC against `tokenizers` live.
#include "runtime/tokenizer/unicode/unicode_normalization.h"

#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

TEST(UnicodeNormalizationTest, Nfc) {
  EXPECT_EQ(NormalizeNfc("plain ascii"), "plain ascii");
  EXPECT_EQ(NormalizeNfc("e\u0301"), "\u00e9");
  EXPECT_EQ(NormalizeNfc("\u00e9"), "\u00e9");
  EXPECT_EQ(NormalizeNfc("\u212b"), "\u00c5");               // singleton decomposition
  EXPECT_EQ(NormalizeNfc("\u0958"), "\u0915\u093c");         // composition exclusion
  EXPECT_EQ(NormalizeNfc("a\u0323\u0302"), "\u1ead");        // two marks, both compose
  EXPECT_EQ(NormalizeNfc("a\u0302\u0323"), "\u1ead");        // reordered first
  EXPECT_EQ(NormalizeNfc("\u1e9b\u0323"), "\u1e9b\u0323");   // long s with dot above
  EXPECT_EQ(NormalizeNfc("\u1100\u1161\u11a8"), "\uac01");   // Hangul L V T
  EXPECT_EQ(NormalizeNfc("\uac00\u11a8"), "\uac01");         // Hangul LV + T
  EXPECT_EQ(NormalizeNfc("\u0301e"), "\u0301e");             // leading non-starter
  EXPECT_EQ(NormalizeNfc("a\u0301\u0301"), "\u00e1\u0301");  // blocked by equal class
}

TEST(UnicodeNormalizationTest, Nfd) {
  EXPECT_EQ(NormalizeNfd("\u00e9"), "e\u0301");
  EXPECT_EQ(NormalizeNfd("\uac01"), "\u1100\u1161\u11a8");
  EXPECT_EQ(NormalizeNfd("\u1ead"), "a\u0323\u0302");
}

}  // namespace
}  // namespace kbitd::runtime
