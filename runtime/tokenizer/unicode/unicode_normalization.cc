#include "runtime/tokenizer/unicode/unicode_normalization.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/utf8.h"
#include "runtime/tokenizer/unicode/unicode_tables.h"

namespace kbitd::runtime {
namespace {

// Hangul syllable constants (Unicode §3.12, Conjoining Jamo Behavior).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

uint8_t CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* begin = internal::kCombiningClassRanges;
  const auto* end = begin + internal::kCombiningClassRangeCount;
  const auto* it = std::lower_bound(
      begin, end, cp,
      [](const internal::CombiningClassRange& r, char32_t c) { return r.last < c; });
  return it != end && it->first <= cp ? it->combining_class : 0;
}

void Decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = static_cast<int>(cp - kSBase);
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    const auto* begin = internal::kDecompositions;
    const auto* end = begin + internal::kDecompositionCount;
    const auto* it = std::lower_bound(
        begin, end, cp,
        [](const internal::Decomposition& d, char32_t c) { return d.code_point < c; });
    if (it != end && it->code_point == cp) {
      out.insert(out.end(), internal::kDecompositionData + it->offset,
                 internal::kDecompositionData + it->offset + it->length);
      return;
    }
  }
  out.push_back(cp);
}

// Full canonical decomposition followed by the canonical ordering algorithm.
std::vector<char32_t> DecomposeAll(std::string_view text) {
  std::vector<char32_t> cps;
  cps.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) Decompose(DecodeUtf8(text, pos), cps);
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClass(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClass(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  return cps;
}

// The primary composite of (first, second), or 0.
char32_t Compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const auto* begin = internal::kCompositions;
  const auto* end = begin + internal::kCompositionCount;
  const auto* it = std::lower_bound(
      begin, end, std::make_pair(first, second), [](const internal::Composition& c, auto key) {
        return c.first != key.first ? c.first < key.first : c.second < key.second;
      });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

bool IsAscii(std::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

std::string NormalizeNfd(std::string_view text) {
  if (IsAscii(text)) return std::string(text);
  std::string out;
  for (char32_t cp : DecomposeAll(text)) AppendUtf8(cp, out);
  return out;
}

std::string NormalizeNfc(std::string_view text) {
  if (IsAscii(text)) return std::string(text);
  std::vector<char32_t> cps = DecomposeAll(text);
  // Canonical composition (UAX #15 §X.1 sample algorithm): a character combines with the last
  // starter unless a character of equal or higher combining class sits between them.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  size_t starter = 0;  // index in `out` of the last starter
  bool have_starter = false;
  int last_class = 0;  // combining class of the last character appended after the starter
  for (char32_t cp : cps) {
    const int cls = CombiningClass(cp);
    if (have_starter && (last_class < cls || last_class == 0)) {
      if (const char32_t composite = Compose(out[starter], cp)) {
        out[starter] = composite;
        continue;
      }
    }
    if (cls == 0) {
      starter = out.size();
      have_starter = true;
    }
    last_class = cls;
    out.push_back(cp);
  }
  std::string result;
  result.reserve(text.size());
  for (char32_t cp : out) AppendUtf8(cp, result);
  return result;
}

}  // namespace kbitd::runtime
