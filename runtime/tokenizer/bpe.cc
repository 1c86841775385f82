#include "runtime/tokenizer/bpe.h"

#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {
namespace {

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json model.", std::string(field), ": ", std::string(what)));
}

// Reads an optional string field ("null" or absent means unset).
absl::StatusOr<std::optional<std::string>> OptionalString(const JsonValue& obj,
                                                          std::string_view key) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return FieldError(key, "must be a string or null");
  return std::optional<std::string>(v->string_value());
}

absl::StatusOr<bool> OptionalBool(const JsonValue& obj, std::string_view key, bool fallback) {
  const JsonValue* v = obj.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_bool()) return FieldError(key, "must be true or false");
  return v->bool_value();
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const JsonValue& model) {
  std::unique_ptr<BpeModel> bpe(new BpeModel());
  KBITD_RETURN_IF_ERROR(bpe->Build(model));
  return bpe;
}

absl::Status BpeModel::Build(const JsonValue& model) {
  const JsonValue* dropout = model.Find("dropout");
  if (dropout != nullptr && !dropout->is_null() &&
      !(dropout->is_number() && dropout->number_value() == 0.0)) {
    return FieldError("dropout", "BPE dropout is not supported (it makes encoding random)");
  }
  const JsonValue* vocab = model.Find("vocab");
  if (vocab == nullptr || !vocab->is_object()) return FieldError("vocab", "must be an object");
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->object()) {
    if (!id.is_integer() || id.integer_value() < 0 || id.integer_value() > INT32_MAX - 1) {
      return FieldError("vocab", absl::StrCat("id of \"", token, "\" is not a valid id"));
    }
    max_id = std::max(max_id, id.integer_value());
  }
  id_to_token_.resize(max_id + 1);
  has_id_.assign(max_id + 1, false);
  vocab_.reserve(vocab->object().size());
  for (const auto& [token, id] : vocab->object()) {
    const auto i = static_cast<int32_t>(id.integer_value());
    if (has_id_[i]) {
      return FieldError("vocab", absl::StrCat("id ", i, " is used by \"", id_to_token_[i],
                                              "\" and \"", token, "\""));
    }
    has_id_[i] = true;
    id_to_token_[i] = token;
    vocab_.emplace(token, i);
  }

  KBITD_ASSIGN_OR_RETURN(std::optional<std::string> unk, OptionalString(model, "unk_token"));
  if (unk.has_value()) {
    auto it = vocab_.find(*unk);
    // tokenizers fails at encode time (UnkTokenOutOfVocabulary) only when unk is needed; an
    // unk token outside the vocabulary is a broken file either way.
    if (it == vocab_.end()) {
      return FieldError("unk_token", absl::StrCat("\"", *unk, "\" is not in the vocabulary"));
    }
    unk_id_ = it->second;
  }
  KBITD_ASSIGN_OR_RETURN(std::optional<std::string> prefix,
                         OptionalString(model, "continuing_subword_prefix"));
  continuing_subword_prefix_ = prefix.value_or("");
  KBITD_ASSIGN_OR_RETURN(std::optional<std::string> suffix,
                         OptionalString(model, "end_of_word_suffix"));
  end_of_word_suffix_ = suffix.value_or("");
  KBITD_ASSIGN_OR_RETURN(fuse_unk_, OptionalBool(model, "fuse_unk", false));
  KBITD_ASSIGN_OR_RETURN(byte_fallback_, OptionalBool(model, "byte_fallback", false));
  KBITD_ASSIGN_OR_RETURN(ignore_merges_, OptionalBool(model, "ignore_merges", false));
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(absl::StrFormat("<0x%02X>", b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const JsonValue* merges = model.Find("merges");
  if (merges == nullptr || merges->is_null()) return absl::OkStatus();
  if (!merges->is_array()) return FieldError("merges", "must be an array");
  merges_.reserve(merges->array().size());
  for (size_t rank = 0; rank < merges->array().size(); ++rank) {
    const JsonValue& m = merges->array()[rank];
    // Two formats: "left right" (tokenizers < 0.20) or ["left", "right"].
    if (m.is_string()) {
      const std::string& s = m.string_value();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return FieldError("merges", absl::StrCat("entry ", rank, " \"", s,
                                                 "\" is not two tokens separated by a space"));
      }
      KBITD_RETURN_IF_ERROR(AddMerge(std::string_view(s).substr(0, space),
                                     std::string_view(s).substr(space + 1), rank));
    } else if (m.is_array() && m.array().size() == 2 && m.array()[0].is_string() &&
               m.array()[1].is_string()) {
      KBITD_RETURN_IF_ERROR(
          AddMerge(m.array()[0].string_value(), m.array()[1].string_value(), rank));
    } else {
      return FieldError("merges", absl::StrCat("entry ", rank, " is not a pair of strings"));
    }
  }
  return absl::OkStatus();
}

absl::Status BpeModel::AddMerge(std::string_view left, std::string_view right, size_t rank) {
  auto l = TokenToId(left);
  auto r = TokenToId(right);
  if (!l.has_value() || !r.has_value()) {
    return FieldError("merges",
                      absl::StrCat("entry ", rank, " uses \"", std::string(l ? right : left),
                                   "\", which is not in the vocabulary"));
  }
  std::string merged(left);
  const size_t skip =
      right.substr(0, continuing_subword_prefix_.size()) == continuing_subword_prefix_
          ? continuing_subword_prefix_.size()
          : 0;
  merged.append(right.substr(skip));
  auto m = TokenToId(merged);
  if (!m.has_value()) {
    return FieldError("merges", absl::StrCat("entry ", rank, " makes \"", merged,
                                             "\", which is not in the vocabulary"));
  }
  // A repeated pair keeps its latest rank, as a HashMap insert in tokenizers does.
  merges_[PairKey(*l, *r)] = {static_cast<int32_t>(rank), *m};
  return absl::OkStatus();
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(absl::string_view(token.data(), token.size()));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_limit() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::InitialSymbols(std::string_view piece, std::vector<int32_t>& symbols) const {
  // An unk run not yet emitted (fuse_unk), or -1. Not a std::optional: GCC 12 (-O2) takes its value
  // for maybe uninitialized where it is pushed (-Wmaybe-uninitialized).
  int32_t pending_unk = -1;
  std::string scratch;
  size_t pos = 0;
  while (pos < piece.size()) {
    const size_t start = pos;
    const int n = Utf8SequenceLength(piece, pos);
    pos += n > 0 ? n : 1;
    std::string_view ch = piece.substr(start, pos - start);
    const bool first = start == 0;
    const bool last = pos == piece.size();
    std::string_view lookup = ch;
    if ((!first && !continuing_subword_prefix_.empty()) || (last && !end_of_word_suffix_.empty())) {
      scratch.clear();
      if (!first) scratch += continuing_subword_prefix_;
      scratch.append(ch);
      if (last) scratch += end_of_word_suffix_;
      lookup = scratch;
    }
    if (auto id = TokenToId(lookup)) {
      if (pending_unk >= 0) symbols.push_back(pending_unk);
      pending_unk = -1;
      symbols.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : lookup) all = all && byte_ids_[b] >= 0;
      if (all) {
        // tokenizers does not flush a pending unk here: it stays pending, so a fused unk run
        // is emitted after these byte tokens.
        for (unsigned char b : lookup) symbols.push_back(byte_ids_[b]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unk token the character is dropped, as in tokenizers.
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);
}

absl::Status BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return absl::OkStatus();
  if (piece.size() > kMaxCachedPiece) return TokenizeUncached(piece, ids);
  const absl::string_view key(piece.data(), piece.size());
  {
    absl::ReaderMutexLock lock(&cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return absl::OkStatus();
    }
  }
  const size_t mark = ids.size();
  KBITD_RETURN_IF_ERROR(TokenizeUncached(piece, ids));
  absl::MutexLock lock(&cache_mutex_);
  if (cache_.size() < kCacheCapacity) {
    cache_.emplace(std::string(piece), std::vector<int32_t>(ids.begin() + mark, ids.end()));
  }
  return absl::OkStatus();
}

absl::Status BpeModel::TokenizeUncached(std::string_view piece, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    if (auto id = TokenToId(piece)) {
      ids.push_back(*id);
      return absl::OkStatus();
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  InitialSymbols(piece, symbols);
  const int n = static_cast<int>(symbols.size());
  if (n <= 1) {
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    return absl::OkStatus();
  }
  // Linked list of live symbols plus a min-heap of candidate merges ordered by (rank, position);
  // stale entries are skipped when the pair at their position no longer yields their id
  // (tokenizers/src/models/bpe/word.rs, merge_all).
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue(
      std::greater<Candidate>(), std::move(storage));
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (int i = 0; i + 1 < n; ++i) {
    if (auto* m = lookup(symbols[i], symbols[i + 1])) queue.push({m->first, i, m->second});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int right = next[top.pos];
    auto* m = lookup(symbols[top.pos], symbols[right]);
    if (m == nullptr || m->second != top.id) continue;
    symbols[top.pos] = top.id;
    alive[right] = false;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) {
      if (auto* pm = lookup(symbols[prev[top.pos]], symbols[top.pos])) {
        queue.push({pm->first, prev[top.pos], pm->second});
      }
    }
    if (next[top.pos] >= 0) {
      if (auto* nm = lookup(symbols[top.pos], symbols[next[top.pos]])) {
        queue.push({nm->first, top.pos, nm->second});
      }
    }
  }
  for (int i = 0; i >= 0; i = next[i]) ids.push_back(symbols[i]);
  return absl::OkStatus();
}

}  // namespace kbitd::runtime
