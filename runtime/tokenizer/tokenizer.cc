#include "runtime/tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "runtime/tokenizer/added_vocabulary.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/post_processor.h"
#include "runtime/tokenizer/pre_tokenizer.h"
#include "runtime/tokenizer/token_decoder.h"
#include "runtime/tokenizer/tokenizer_json.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

namespace {

// tokenizer_config.json names special tokens as a string or as {"content": ...}.
std::optional<std::string> ConfigTokenName(const JsonValue& config, std::string_view key) {
  const JsonValue* v = config.Find(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->string_value();
  if (const JsonValue* content = v->Find("content"); content && content->is_string()) {
    return content->string_value();
  }
  return std::nullopt;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  KBITD_ASSIGN_OR_RETURN(std::string json, ReadFileToString(path));
  std::string config;
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  if (std::ifstream(dir + "tokenizer_config.json").good()) {
    KBITD_ASSIGN_OR_RETURN(config, ReadFileToString(dir + "tokenizer_config.json"));
  }
  auto tokenizer = FromJson(json, config);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                               std::string_view config_json) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  KBITD_RETURN_IF_ERROR(t->Init(json, config_json));
  return t;
}

absl::Status Tokenizer::Init(std::string_view json_text, std::string_view config_json) {
  auto parsed = ParseJson(json_text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json is not valid JSON: ", parsed.status().message()));
  }
  const JsonValue& root = *parsed;
  if (!root.is_object()) return tj::FieldError("(root)", "must be an object");

  const JsonValue* model = root.Find("model");
  if (model == nullptr) return tj::FieldError("model", "missing");
  KBITD_ASSIGN_OR_RETURN(std::string model_type, tj::String(*model, "type", "model", "BPE"));
  if (!model->is_object()) return tj::FieldError("model", "must be an object");
  if (model_type != "BPE") {
    return tj::FieldError("model.type",
                          absl::StrCat("unsupported model \"", model_type, "\" (supported: BPE)"));
  }
  KBITD_ASSIGN_OR_RETURN(model_, BpeModel::FromJson(*model));

  if (const JsonValue* v = root.Find("normalizer"); v && !v->is_null()) {
    KBITD_ASSIGN_OR_RETURN(normalizer_, Normalizer::FromJson(*v, "normalizer"));
  }
  if (const JsonValue* v = root.Find("pre_tokenizer"); v && !v->is_null()) {
    KBITD_ASSIGN_OR_RETURN(pre_tokenizer_, PreTokenizer::FromJson(*v, "pre_tokenizer"));
  }
  if (const JsonValue* v = root.Find("post_processor"); v && !v->is_null()) {
    KBITD_ASSIGN_OR_RETURN(post_processor_, PostProcessor::FromJson(*v, "post_processor"));
  }
  if (const JsonValue* v = root.Find("decoder"); v && !v->is_null()) {
    KBITD_ASSIGN_OR_RETURN(decoder_, TokenDecoder::FromJson(*v, "decoder"));
  }
  KBITD_ASSIGN_OR_RETURN(added_,
                         AddedVocabulary::FromJson(root.Find("added_tokens"), normalizer_.get()));
  vocab_size_ = model_->id_limit();
  for (const AddedToken& t : added_->tokens()) vocab_size_ = std::max(vocab_size_, t.id + 1);

  if (const JsonValue* unk = model->Find("unk_token"); unk && unk->is_string()) {
    unk_id_ = TokenToId(unk->string_value());
  }
  std::optional<std::string> bos_name, eos_name;
  if (!config_json.empty()) {
    auto config = ParseJson(config_json);
    if (!config.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer_config.json is not valid JSON: ", config.status().message()));
    }
    bos_name = ConfigTokenName(*config, "bos_token");
    eos_name = ConfigTokenName(*config, "eos_token");
  }
  if (bos_name) {
    bos_id_ = TokenToId(*bos_name);
  } else if (post_processor_) {
    bos_id_ = post_processor_->leading_special_id();
  }
  if (eos_name) {
    eos_id_ = TokenToId(*eos_name);
  } else {
    for (std::string_view name :
         {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<eos>"}) {
      if ((eos_id_ = TokenToId(name))) break;
    }
  }
  return absl::OkStatus();
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto id = added_->FindByContent(token)) return id;
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (const AddedToken* t = added_->FindById(id)) return t->decoded;
  if (const std::string* s = model_->IdToToken(id)) return *s;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const AddedToken* t = added_->FindById(id);
  return t != nullptr && t->special;
}

bool Tokenizer::IsByteFallbackToken(int32_t id) const {
  if (decoder_ == nullptr || !decoder_->has_byte_fallback() || added_->FindById(id)) return false;
  const std::string* s = model_->IdToToken(id);
  return s != nullptr && s->size() == 6 && s->compare(0, 3, "<0x") == 0 && (*s)[5] == '>';
}

absl::Status Tokenizer::EncodePiece(std::string_view text, bool at_start,
                                    std::vector<int32_t>& ids) const {
  std::string normalized = normalizer_ ? normalizer_->Normalize(text) : std::string(text);
  std::vector<AddedVocabulary::Segment> segments;
  added_->Split(normalized, /*normalized=*/true, segments);
  std::vector<PrePiece> pieces;
  for (const AddedVocabulary::Segment& seg : segments) {
    if (seg.id) {
      ids.push_back(*seg.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(
        {normalized.substr(seg.begin, seg.end - seg.begin), at_start && seg.begin == 0});
    if (pre_tokenizer_) pre_tokenizer_->Apply(pieces);
    for (const PrePiece& piece : pieces) {
      KBITD_RETURN_IF_ERROR(model_->Tokenize(piece.text, ids));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (auto bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat("text to encode is not valid UTF-8 (first bad byte at offset ", *bad, ")"));
  }
  std::vector<int32_t> ids;
  std::vector<AddedVocabulary::Segment> segments;
  added_->Split(text, /*normalized=*/false, segments);
  for (const AddedVocabulary::Segment& seg : segments) {
    if (seg.id) {
      ids.push_back(*seg.id);
    } else {
      KBITD_RETURN_IF_ERROR(
          EncodePiece(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, ids));
    }
  }
  if (post_processor_) return post_processor_->Apply(std::move(ids), add_special_tokens);
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* t = added_->FindById(id)) {
      if (skip_special_tokens && t->special) continue;
      tokens.push_back(t->decoded);
      continue;
    }
    const std::string* s = model_->IdToToken(id);
    if (s == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is not in the vocabulary (vocab_size ", vocab_size_, ")"));
    }
    // A model token whose content is also a special added token is skipped too (tokenizers
    // checks by content).
    if (skip_special_tokens && added_->IsSpecialContent(*s)) continue;
    tokens.push_back(*s);
  }
  if (decoder_ == nullptr) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  return decoder_->Decode(std::move(tokens));
}

}  // namespace kbitd::runtime
