// Golden tests: ids and texts recorded with Hugging Face `tokenizers` by
// tools/golden/make_tokenizers.py for the three test tokenizers in tests/data/tokenizers/.
#include "runtime/tokenizer/tokenizer.h"

#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tokenizer/streaming_decoder.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;

std::string DataPath(const std::string& name) {
  return std::string(KBITD_TEST_DATA_DIR) + "/tokenizers/" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const JsonValue& Golden() {
  static const JsonValue* golden = [] {
    auto parsed = ParseJson(ReadAll(DataPath("golden.json")));
    return new JsonValue(parsed.ok() ? *parsed : JsonValue());
  }();
  return *golden;
}

std::vector<int32_t> ToIds(const JsonValue& array) {
  std::vector<int32_t> ids;
  for (const JsonValue& v : array.array()) ids.push_back(static_cast<int32_t>(v.integer_value()));
  return ids;
}

std::unique_ptr<Tokenizer> Load(const std::string& name) {
  auto t = Tokenizer::FromFile(DataPath(name + ".json"));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, EncodeAndDecodeMatchTokenizers) {
  ASSERT_TRUE(Golden().is_object()) << "golden.json missing or malformed";
  auto tokenizer = Load(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const JsonValue& texts = *Golden().Find("texts");
  const JsonValue& entry = *Golden().Find("tokenizers")->Find(GetParam());
  ASSERT_GT(texts.array().size(), 40u);
  for (size_t i = 0; i < texts.array().size(); ++i) {
    const std::string& text = texts.array()[i].string_value();
    SCOPED_TRACE(testing::Message() << "text #" << i << ": \"" << text << "\"");
    const std::vector<int32_t> ids = ToIds(entry.Find("encode")->array()[i]);
    auto encoded = tokenizer->Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(*encoded, ids);
    auto plain = tokenizer->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(*plain, ToIds(entry.Find("encode_plain")->array()[i]));
    auto decoded = tokenizer->Decode(ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, entry.Find("decode")->array()[i].string_value());
    auto skipped = tokenizer->Decode(ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    EXPECT_EQ(*skipped, entry.Find("decode_skip")->array()[i].string_value());
  }
}

TEST_P(GoldenTest, StreamingDecodeEqualsFullDecode) {
  auto tokenizer = Load(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const JsonValue& entry = *Golden().Find("tokenizers")->Find(GetParam());
  std::vector<std::vector<int32_t>> sequences;
  for (const JsonValue& ids : entry.Find("encode")->array()) sequences.push_back(ToIds(ids));
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {  // random ids hit byte tokens, specials and odd fragments
    std::vector<int32_t> ids(1 + rng() % 25);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % tokenizer->vocab_size());
    sequences.push_back(ids);
  }
  for (bool skip : {false, true}) {
    for (const auto& ids : sequences) {
      StreamingDecoder stream(*tokenizer, skip);
      std::string total;
      for (int32_t id : ids) {
        auto piece = stream.Push(id);
        ASSERT_TRUE(piece.ok()) << piece.status();
        total += *piece;
      }
      total += stream.Flush();
      auto full = tokenizer->Decode(ids, skip);
      ASSERT_TRUE(full.ok());
      EXPECT_EQ(total, *full) << "skip=" << skip;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenTest,
                         ::testing::Values("gpt2_bytelevel", "llama3_regex", "llama2_metaspace"));

TEST(TokenizerTest, StreamingHoldsBackPartialCharacters) {
  auto tokenizer = Load("llama2_metaspace");
  ASSERT_NE(tokenizer, nullptr);
  // "东" is not in this vocabulary: it becomes three byte-fallback tokens.
  auto ids = tokenizer->Encode("a东", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 4u);
  StreamingDecoder stream(*tokenizer, false);
  EXPECT_EQ(*stream.Push((*ids)[0]), "a");
  EXPECT_EQ(*stream.Push((*ids)[1]), "");
  EXPECT_EQ(*stream.Push((*ids)[2]), "");
  EXPECT_EQ(*stream.Push((*ids)[3]), "");  // a byte run may still grow
  EXPECT_EQ(stream.Flush(), "东");

  auto gpt2 = Load("gpt2_bytelevel");
  ASSERT_NE(gpt2, nullptr);
  auto emoji = gpt2->Encode("😀 ok", false);  // the emoji's four bytes span several tokens
  ASSERT_TRUE(emoji.ok());
  StreamingDecoder byte_stream(*gpt2, false);
  std::vector<std::string> pieces;
  for (int32_t id : *emoji) pieces.push_back(*byte_stream.Push(id));
  pieces.push_back(byte_stream.Flush());
  std::string total;
  for (const std::string& p : pieces) {
    EXPECT_EQ(p.find("\xEF\xBF\xBD"), std::string::npos) << "emitted a partial character";
    total += p;
  }
  EXPECT_EQ(total, "😀 ok");
}

TEST(TokenizerTest, SpecialTokenIdsAndLookups) {
  auto llama3 = Load("llama3_regex");
  ASSERT_NE(llama3, nullptr);
  EXPECT_EQ(llama3->bos_id(), llama3->TokenToId("<|begin_of_text|>"));
  EXPECT_EQ(llama3->eos_id(), llama3->TokenToId("<|end_of_text|>"));
  EXPECT_TRUE(llama3->IsSpecial(*llama3->TokenToId("<|eot_id|>")));
  EXPECT_FALSE(llama3->IsSpecial(*llama3->TokenToId("the")));
  EXPECT_EQ(llama3->IdToToken(*llama3->TokenToId("the")), "the");
  EXPECT_EQ(llama3->TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(llama3->vocab_size(), 1287);

  auto llama2 = Load("llama2_metaspace");
  ASSERT_NE(llama2, nullptr);
  EXPECT_EQ(llama2->bos_id(), 1);
  EXPECT_EQ(llama2->eos_id(), 2);
  EXPECT_EQ(llama2->unk_id(), 0);
  auto with_config = Tokenizer::FromJson(ReadAll(DataPath("llama2_metaspace.json")),
                                         R"({"bos_token": {"content": "</s>"},
                                             "eos_token": "<|im_end|>"})");
  ASSERT_TRUE(with_config.ok()) << with_config.status();
  EXPECT_EQ((*with_config)->bos_id(), 2);
  EXPECT_EQ((*with_config)->eos_id(), (*with_config)->TokenToId("<|im_end|>"));
}

TEST(TokenizerTest, RejectsInvalidUtf8AndIds) {
  auto tokenizer = Load("gpt2_bytelevel");
  ASSERT_NE(tokenizer, nullptr);
  auto bad = tokenizer->Encode("ok\xC3", true);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("offset 2"));
  EXPECT_FALSE(tokenizer->Encode("\xED\xA0\x80", true).ok());  // surrogate
  EXPECT_FALSE(tokenizer->Encode("\xC0\xAF", true).ok());      // overlong
  std::vector<int32_t> ids = {5, tokenizer->vocab_size()};
  auto decoded = tokenizer->Decode(ids, false);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(decoded.status().message()), HasSubstr("not in the vocabulary"));
  StreamingDecoder stream(*tokenizer, false);
  EXPECT_FALSE(stream.Push(-3).ok());
  EXPECT_EQ(*stream.Push(*tokenizer->TokenToId("a")), "a");
}

// Replaces one member of a tokenizer.json and returns the load error.
std::string LoadError(const std::string& name, const std::string& key, const std::string& value) {
  auto json = ParseJson(ReadAll(DataPath(name + ".json")));
  EXPECT_TRUE(json.ok());
  auto replacement = ParseJson(value);
  EXPECT_TRUE(replacement.ok()) << value;
  json->Set(key, *replacement);
  auto t = Tokenizer::FromJson(json->Write());
  EXPECT_FALSE(t.ok()) << key << " = " << value;
  return t.ok() ? "" : std::string(t.status().message());
}

TEST(TokenizerTest, UnsupportedComponentsNameTheField) {
  EXPECT_THAT(LoadError("llama3_regex", "normalizer", R"({"type": "NFKC"})"),
              HasSubstr("normalizer.type: unsupported normalizer \"NFKC\""));
  EXPECT_THAT(LoadError("llama3_regex", "pre_tokenizer",
                        R"({"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}]})"),
              HasSubstr("pre_tokenizer.pretokenizers[0].type: unsupported pre_tokenizer"));
  EXPECT_THAT(LoadError("llama3_regex", "decoder", R"({"type": "WordPiece"})"),
              HasSubstr("decoder.type"));
  EXPECT_THAT(LoadError("llama3_regex", "post_processor", R"({"type": "Unknown"})"),
              HasSubstr("post_processor.type"));
  EXPECT_THAT(LoadError("llama3_regex", "model", R"({"type": "WordPiece", "vocab": {}})"),
              HasSubstr("model.type: unsupported model \"WordPiece\""));
  EXPECT_THAT(LoadError("llama3_regex", "pre_tokenizer",
                        R"({"type": "Split", "pattern": {"Regex": "(?<=a)b"},
                            "behavior": "Isolated", "invert": false})"),
              HasSubstr("pre_tokenizer.pattern"));
  EXPECT_THAT(LoadError("gpt2_bytelevel", "model",
                        R"({"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"]]})"),
              HasSubstr("model.merges"));
  EXPECT_THAT(LoadError("gpt2_bytelevel", "added_tokens", R"({"id": 1})"),
              HasSubstr("added_tokens"));
}

TEST(TokenizerTest, MalformedJsonIsAnError) {
  auto t = Tokenizer::FromJson("{\"model\": {\"type\": \"BPE\", ");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("not valid JSON"));
  auto missing = Tokenizer::FromFile(DataPath("does_not_exist.json"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(Tokenizer::FromJson("{}").ok());
  EXPECT_FALSE(Tokenizer::FromJson("[]").ok());
}

TEST(TokenizerTest, MergesInLegacyStringFormat) {
  // tokenizers < 0.20 wrote merges as "left right" strings; both forms must give the same ids.
  auto json = ParseJson(ReadAll(DataPath("gpt2_bytelevel.json")));
  ASSERT_TRUE(json.ok());
  JsonValue model = *json->Find("model");
  JsonValue::Array legacy;
  for (const JsonValue& m : model.Find("merges")->array()) {
    legacy.push_back(
        JsonValue::String(m.array()[0].string_value() + " " + m.array()[1].string_value()));
  }
  model.Set("merges", JsonValue::MakeArray(std::move(legacy)));
  json->Set("model", model);
  auto legacy_tokenizer = Tokenizer::FromJson(json->Write());
  ASSERT_TRUE(legacy_tokenizer.ok()) << legacy_tokenizer.status();
  auto modern = Load("gpt2_bytelevel");
  const std::string text = "The quick brown fox jumps over the lazy dog, it's 2024!";
  EXPECT_EQ(*(*legacy_tokenizer)->Encode(text, true), *modern->Encode(text, true));
}

}  // namespace
}  // namespace kbitd::runtime
