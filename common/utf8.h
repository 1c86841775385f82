// UTF-8 helpers: strict decoding with the offset of the first error, encoding, and lossy decoding
// that replaces each maximal invalid subpart with U+FFFD (Unicode 15 §3.9 "U+FFFD Substitution of
// Maximal Subparts"; what Rust's String::from_utf8_lossy and Python's
// bytes.decode(errors="replace") do, and so what Hugging Face `tokenizers` decoders produce).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace kbitd {

// Length of the well-formed sequence starting at text[pos] (1..4), or -(n) where n >= 1 is the
// length of the maximal invalid subpart to replace. pos must be < text.size().
int Utf8SequenceLength(std::string_view text, size_t pos);

// Byte offset of the first ill-formed sequence, or nullopt when text is valid UTF-8.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

// Well-formed UTF-8: no overlong forms, surrogates or code points past U+10FFFF (RFC 3629).
inline bool IsValidUtf8(std::string_view text) { return !FindInvalidUtf8(text).has_value(); }

// Decodes the code point at text[pos] and advances pos. text must be valid UTF-8.
char32_t DecodeUtf8(std::string_view text, size_t& pos);

void AppendUtf8(char32_t cp, std::string& out);

// Valid UTF-8 copy of bytes with each maximal invalid subpart replaced by U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

}  // namespace kbitd
