// Lookups over the generated tables in unicode_tables.cc.
#include <algorithm>
#include <array>

#include "runtime/tokenizer/unicode/unicode_tables.h"

namespace kbitd::runtime {
namespace {

// Latin-1 is looked up directly: most text is ASCII, and this keeps the hot path branch-light.
std::array<UnicodeCategory, 256> BuildLatin1Table() {
  std::array<UnicodeCategory, 256> table{};
  for (size_t i = 0; i < internal::kCategoryRangeCount; ++i) {
    const internal::CategoryRange& r = internal::kCategoryRanges[i];
    if (r.first >= 256) break;
    for (uint32_t cp = r.first; cp <= r.last && cp < 256; ++cp) {
      table[cp] = static_cast<UnicodeCategory>(r.category);
    }
  }
  return table;
}

}  // namespace

UnicodeCategory GetUnicodeCategory(char32_t cp) {
  static const std::array<UnicodeCategory, 256> latin1 = BuildLatin1Table();
  if (cp < 256) return latin1[cp];
  const internal::CategoryRange* begin = internal::kCategoryRanges;
  const internal::CategoryRange* end = begin + internal::kCategoryRangeCount;
  // First range whose last code point is >= cp.
  const internal::CategoryRange* it = std::lower_bound(
      begin, end, cp, [](const internal::CategoryRange& r, char32_t c) { return r.last < c; });
  if (it == end || it->first > cp) return UnicodeCategory::kCn;
  return static_cast<UnicodeCategory>(it->category);
}

bool IsUnicodeWhiteSpace(char32_t cp) {
  // PropList.txt, White_Space.
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool IsWordChar(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  constexpr CategoryMask kWord = kLetterMask | kMarkMask | CategoryBit(UnicodeCategory::kNd) |
                                 CategoryBit(UnicodeCategory::kNl) |
                                 CategoryBit(UnicodeCategory::kPc);
  if (CategoryBit(GetUnicodeCategory(cp)) & kWord) return true;
  return cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) ||
         (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
         (cp >= 0x1F170 && cp <= 0x1F189);
}

}  // namespace kbitd::runtime
