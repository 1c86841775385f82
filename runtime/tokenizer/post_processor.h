// tokenizer.json "post_processor" for single sequences: TemplateProcessing (e.g. Llama's
// "<s> $A"), BertProcessing/RobertaProcessing (cls $A sep), ByteLevel (offsets only: no effect on
// ids) and Sequence. Special tokens are added only when add_special_tokens is set, as in
// tokenizers/src/processors/. Thread-safe: const after creation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"

namespace kbitd::runtime {

class PostProcessor {
 public:
  static absl::StatusOr<std::unique_ptr<PostProcessor>> FromJson(const JsonValue& json,
                                                                 std::string_view path);
  // Returns the final ids of one encoded sequence.
  std::vector<int32_t> Apply(std::vector<int32_t> ids, bool add_special_tokens) const;
  // The first id the template puts before the sequence (the BOS of Llama-style templates).
  std::optional<int32_t> leading_special_id() const;

 private:
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // special token ids when !is_sequence
  };
  absl::Status Add(const JsonValue& json, std::string_view path);
  // One template per step; an empty step list leaves ids unchanged.
  std::vector<std::vector<Item>> steps_;
};

}  // namespace kbitd::runtime
