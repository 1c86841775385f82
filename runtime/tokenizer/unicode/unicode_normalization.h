// Unicode canonical normalization forms NFD and NFC (Unicode Standard Annex #15), for the NFC/NFD
// normalizers of tokenizer.json (Qwen2 uses NFC). Data: Unicode 16.0, generated into
// unicode_tables.cc; Hangul syllables are (de)composed algorithmically (Unicode §3.12).
// Thread-safe (pure functions). Input must be valid UTF-8.
#pragma once

#include <string>
#include <string_view>

namespace kbitd::runtime {

std::string NormalizeNfd(std::string_view text);
std::string NormalizeNfc(std::string_view text);

}  // namespace kbitd::runtime
