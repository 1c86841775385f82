#include "runtime/tokenizer/post_processor.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/tokenizer/tokenizer_json.h"

namespace kbitd::runtime {

namespace tj = tokenizer_json;

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessor::FromJson(const JsonValue& json,
                                                                       std::string_view path) {
  std::unique_ptr<PostProcessor> p(new PostProcessor());
  KBITD_RETURN_IF_ERROR(p->Add(json, path));
  return p;
}

absl::Status PostProcessor::Add(const JsonValue& json, std::string_view path) {
  KBITD_ASSIGN_OR_RETURN(std::string type, tj::TypeOf(json, path));
  if (type == "Sequence") {
    KBITD_ASSIGN_OR_RETURN(const JsonValue::Array* items, tj::Array(json, "processors", path));
    for (size_t i = 0; i < items->size(); ++i) {
      KBITD_RETURN_IF_ERROR(Add((*items)[i], tj::Index(tj::Child(path, "processors"), i)));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();
  std::vector<Item> items;
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // "cls": ["[CLS]", 101], "sep": ["[SEP]", 102]
    std::vector<int32_t> ids;
    for (std::string_view key : {"cls", "sep"}) {
      const JsonValue* v = json.Find(key);
      if (v == nullptr || !v->is_array() || v->array().size() != 2 || !v->array()[1].is_integer()) {
        return tj::FieldError(tj::Child(path, key), "must be [token, id]");
      }
      ids.push_back(static_cast<int32_t>(v->array()[1].integer_value()));
    }
    items = {{false, {ids[0]}}, {true, {}}, {false, {ids[1]}}};
  } else if (type == "TemplateProcessing") {
    const std::string single_path = tj::Child(path, "single");
    KBITD_ASSIGN_OR_RETURN(const JsonValue::Array* single, tj::Array(json, "single", path));
    const JsonValue* specials = json.Find("special_tokens");
    if (specials == nullptr || !specials->is_object()) {
      return tj::FieldError(tj::Child(path, "special_tokens"), "must be an object");
    }
    for (size_t i = 0; i < single->size(); ++i) {
      const JsonValue& piece = (*single)[i];
      const std::string piece_path = tj::Index(single_path, i);
      if (const JsonValue* seq = piece.Find("Sequence")) {
        KBITD_ASSIGN_OR_RETURN(std::string id, tj::String(*seq, "id", piece_path, ""));
        if (id != "A") {
          return tj::FieldError(piece_path, "a single-sequence template may only use $A");
        }
        items.push_back({true, {}});
      } else if (const JsonValue* special = piece.Find("SpecialToken")) {
        KBITD_ASSIGN_OR_RETURN(std::string name, tj::String(*special, "id", piece_path, ""));
        const JsonValue* entry = specials->Find(name);
        const JsonValue* ids = entry ? entry->Find("ids") : nullptr;
        if (ids == nullptr || !ids->is_array()) {
          return tj::FieldError(tj::Child(path, "special_tokens"),
                                absl::StrCat("no ids for \"", name, "\""));
        }
        Item item;
        for (const JsonValue& id : ids->array()) {
          if (!id.is_integer() || id.integer_value() < 0 || id.integer_value() > INT32_MAX) {
            return tj::FieldError(tj::Child(path, "special_tokens"),
                                  absl::StrCat("invalid id for \"", name, "\""));
          }
          item.ids.push_back(static_cast<int32_t>(id.integer_value()));
        }
        items.push_back(std::move(item));
      } else {
        return tj::FieldError(piece_path, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
  } else {
    return tj::FieldError(tj::Child(path, "type"),
                          absl::StrCat("unsupported post_processor \"", type,
                                       "\" (supported: TemplateProcessing, BertProcessing, "
                                       "RobertaProcessing, ByteLevel, Sequence)"));
  }
  steps_.push_back(std::move(items));
  return absl::OkStatus();
}

std::vector<int32_t> PostProcessor::Apply(std::vector<int32_t> ids, bool add_special_tokens) const {
  for (const std::vector<Item>& items : steps_) {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& item : items) {
      if (item.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else if (add_special_tokens) {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    ids = std::move(out);
  }
  return ids;
}

std::optional<int32_t> PostProcessor::leading_special_id() const {
  for (const std::vector<Item>& items : steps_) {
    if (!items.empty() && !items[0].is_sequence && !items[0].ids.empty()) return items[0].ids[0];
  }
  return std::nullopt;
}

}  // namespace kbitd::runtime
