#include "runtime/tokenizer/added_vocabulary.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/tokenizer_json.h"
#include "runtime/tokenizer/unicode/unicode_tables.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

namespace {

// Code point that ends at byte `end` of valid UTF-8 text.
char32_t LastCodePoint(std::string_view text, size_t end, size_t* start_out = nullptr) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  if (start_out != nullptr) *start_out = start;
  size_t pos = start;
  return DecodeUtf8(text, pos);
}

}  // namespace

void AddedVocabulary::Trie::Insert(std::string_view pattern, int token) {
  int node = 0;
  for (unsigned char c : pattern) {
    auto it = nodes[node].next.find(c);
    if (it == nodes[node].next.end()) {
      nodes.emplace_back();
      it = nodes[node].next.emplace(c, static_cast<int>(nodes.size()) - 1).first;
    }
    node = it->second;
  }
  // The first token wins for duplicate patterns, like the first aho-corasick pattern does.
  if (nodes[node].token < 0) nodes[node].token = token;
  first_byte[static_cast<unsigned char>(pattern[0])] = true;
}

int AddedVocabulary::Trie::LongestAt(std::string_view text, size_t pos, size_t& end) const {
  int node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = nodes[node].next.find(static_cast<unsigned char>(text[i]));
    if (it == nodes[node].next.end()) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      end = i + 1;
    }
  }
  return best;
}

absl::StatusOr<std::unique_ptr<AddedVocabulary>> AddedVocabulary::FromJson(
    const JsonValue* added_tokens, const Normalizer* normalizer) {
  std::unique_ptr<AddedVocabulary> vocab(new AddedVocabulary());
  if (added_tokens == nullptr || added_tokens->is_null()) return vocab;
  if (!added_tokens->is_array()) return tj::FieldError("added_tokens", "must be an array");
  for (size_t i = 0; i < added_tokens->array().size(); ++i) {
    const JsonValue& t = added_tokens->array()[i];
    const std::string path = tj::Index("added_tokens", i);
    if (!t.is_object()) return tj::FieldError(path, "must be an object");
    AddedToken token;
    KBITD_ASSIGN_OR_RETURN(int64_t id, tj::Integer(t, "id", path, -1));
    if (id < 0 || id > INT32_MAX - 1) return tj::FieldError(tj::Child(path, "id"), "invalid id");
    token.id = static_cast<int32_t>(id);
    KBITD_ASSIGN_OR_RETURN(token.content, tj::String(t, "content", path, ""));
    KBITD_ASSIGN_OR_RETURN(token.single_word, tj::Bool(t, "single_word", path, false));
    KBITD_ASSIGN_OR_RETURN(token.lstrip, tj::Bool(t, "lstrip", path, false));
    KBITD_ASSIGN_OR_RETURN(token.rstrip, tj::Bool(t, "rstrip", path, false));
    KBITD_ASSIGN_OR_RETURN(token.special, tj::Bool(t, "special", path, false));
    KBITD_ASSIGN_OR_RETURN(token.normalized, tj::Bool(t, "normalized", path, !token.special));
    if (token.content.empty()) continue;  // tokenizers ignores empty added tokens
    token.decoded =
        token.normalized && normalizer ? normalizer->Normalize(token.content) : token.content;
    if (vocab->by_id_.contains(token.id)) {
      return tj::FieldError(tj::Child(path, "id"), absl::StrCat("id ", id, " is used twice"));
    }
    vocab->by_id_[token.id] = vocab->tokens_.size();
    vocab->by_content_.emplace(token.content, vocab->tokens_.size());
    vocab->tokens_.push_back(std::move(token));
  }
  // tokenizers searches special tokens first, then the others, in file order.
  for (bool special : {true, false}) {
    for (size_t i = 0; i < vocab->tokens_.size(); ++i) {
      const AddedToken& t = vocab->tokens_[i];
      if (t.special != special) continue;
      if (!t.normalized) {
        vocab->raw_trie_.Insert(t.content, static_cast<int>(i));
      } else {
        if (!t.decoded.empty()) vocab->normalized_trie_.Insert(t.decoded, static_cast<int>(i));
      }
    }
  }
  return vocab;
}

void AddedVocabulary::Split(std::string_view text, bool normalized,
                            std::vector<Segment>& out) const {
  const Trie& trie = normalized ? normalized_trie_ : raw_trie_;
  size_t start_offset = 0;  // end of the previous accepted match
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t stop = 0;
    const int index = trie.LongestAt(text, pos, stop);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    pos = stop;  // the search resumes after the raw match, whatever the stripping does
    const AddedToken& token = tokens_[index];
    if (token.single_word) {
      const bool start_ok = start == 0 || !IsWordChar(LastCodePoint(text, start));
      size_t p = stop;
      const bool stop_ok = stop == text.size() || !IsWordChar(DecodeUtf8(text, p));
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t prev;
        if (!IsUnicodeWhiteSpace(LastCodePoint(text, s, &prev))) break;
        s = prev;
      }
      start = std::max(s, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t p = stop;
        if (!IsUnicodeWhiteSpace(DecodeUtf8(text, p))) break;
        stop = p;
      }
    }
    if (start_offset < start) out.push_back({std::nullopt, start_offset, start});
    out.push_back({token.id, start, stop});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({std::nullopt, start_offset, text.size()});
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = by_content_.find(absl::string_view(content.data(), content.size()));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

bool AddedVocabulary::IsSpecialContent(std::string_view content) const {
  auto it = by_content_.find(absl::string_view(content.data(), content.size()));
  return it != by_content_.end() && tokens_[it->second].special;
}

}  // namespace kbitd::runtime
