// YAML -> kbitd.v1.Config by walking the YAML tree against the message descriptor, so errors keep
// the YAML line and column (a YAML -> JSON -> proto route would lose them; Envoy's
// ValueUtil::loadFromYaml does the same). yaml-cpp throws; its exceptions stop in this file.
#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace kbitd::server {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Where(const std::string& source, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.line < 0) return std::string(source);
  return absl::StrCat(source, ":", mark.line + 1, ":", mark.column + 1);
}

absl::Status Invalid(const std::string& where, const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": ", path.empty() ? std::string("config") : path, ": ", what));
}

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : absl::StrCat(path, ".", key);
}

// Walks one YAML node into one field or message, recording where each field came from.
class YamlWalker {
 public:
  YamlWalker(const std::string& source, absl::flat_hash_map<std::string, std::string>* origin)
      : source_(source), origin_(origin) {}

  absl::Status Walk(const YAML::Node& node, Message* message, const std::string& path) {
    if (node.IsNull()) return absl::OkStatus();
    if (!node.IsMap()) return Invalid(Where(source_, node), path, "expected a mapping");
    const auto* descriptor = message->GetDescriptor();
    absl::flat_hash_set<std::string> seen;
    for (const auto& entry : node) {
      const YAML::Node& key = entry.first;
      if (!key.IsScalar()) return Invalid(Where(source_, key), path, "keys must be scalars");
      const std::string& name = key.Scalar();
      const FieldDescriptor* field = descriptor->FindFieldByName(name);
      if (field == nullptr) {
        std::vector<std::string> known;
        for (int i = 0; i < descriptor->field_count(); ++i) {
          known.push_back(descriptor->field(i)->name());
        }
        return Invalid(
            Where(source_, key), path,
            absl::StrCat("unknown key '", name, "' (known: ", absl::StrJoin(known, ", "), ")"));
      }
      if (!seen.insert(name).second) {
        return Invalid(Where(source_, key), Join(path, name), "duplicate key");
      }
      KBITD_RETURN_IF_ERROR(Field(entry.second, message, field, Join(path, name)));
    }
    return absl::OkStatus();
  }

  absl::Status Field(const YAML::Node& node, Message* message, const FieldDescriptor* field,
                     const std::string& path) {
    (*origin_)[path] = Where(source_, node);
    const Reflection* reflection = message->GetReflection();
    if (field->is_map()) {
      if (node.IsNull()) return absl::OkStatus();
      if (!node.IsMap()) return Invalid(Where(source_, node), path, "expected a mapping");
      reflection->ClearField(message, field);
      absl::flat_hash_set<std::string> seen;
      for (const auto& entry : node) {
        if (!entry.first.IsScalar()) {
          return Invalid(Where(source_, entry.first), path, "keys must be scalars");
        }
        const std::string& key = entry.first.Scalar();
        if (!seen.insert(key).second) {
          return Invalid(Where(source_, entry.first), path,
                         absl::StrCat("duplicate key '", key, "'"));
        }
        google::protobuf::Message* item = reflection->AddMessage(message, field);
        const auto* item_descriptor = item->GetDescriptor();
        const std::string item_path = absl::StrCat(path, ".", key);
        KBITD_RETURN_IF_ERROR(
            Scalar(entry.first, item, item_descriptor->FindFieldByName("key"), item_path));
        KBITD_RETURN_IF_ERROR(
            Element(entry.second, item, item_descriptor->FindFieldByName("value"), item_path));
      }
      return absl::OkStatus();
    }
    if (field->is_repeated()) {
      if (node.IsNull()) return absl::OkStatus();
      if (!node.IsSequence()) return Invalid(Where(source_, node), path, "expected a list");
      reflection->ClearField(message, field);
      for (size_t i = 0; i < node.size(); ++i) {
        const std::string item_path = absl::StrCat(path, "[", i, "]");
        (*origin_)[item_path] = Where(source_, node[i]);
        if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          KBITD_RETURN_IF_ERROR(Walk(node[i], reflection->AddMessage(message, field), item_path));
        } else {
          KBITD_RETURN_IF_ERROR(Scalar(node[i], message, field, item_path));
        }
      }
      return absl::OkStatus();
    }
    return Element(node, message, field, path);
  }

  // A singular field: a nested message or a scalar.
  absl::Status Element(const YAML::Node& node, Message* message, const FieldDescriptor* field,
                       const std::string& path) {
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      return Walk(node, message->GetReflection()->MutableMessage(message, field), path);
    }
    return Scalar(node, message, field, path);
  }

  // Sets (or, for repeated fields, appends) one scalar value.
  absl::Status Scalar(const YAML::Node& node, Message* message, const FieldDescriptor* field,
                      const std::string& path) {
    const std::string where = Where(source_, node);
    if (!node.IsScalar()) return Invalid(where, path, "expected a single value");
    const std::string& text = node.Scalar();
    const Reflection* r = message->GetReflection();
    const bool repeated = field->is_repeated();
    auto bad = [&](const std::string& expected) {
      return Invalid(where, path, absl::StrCat("'", text, "' is not ", expected));
    };
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        repeated ? r->AddString(message, field, text) : r->SetString(message, field, text);
        return absl::OkStatus();
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool value;
        if (text == "true" || text == "True" || text == "TRUE") {
          value = true;
        } else if (text == "false" || text == "False" || text == "FALSE") {
          value = false;
        } else {
          return bad("true or false");
        }
        repeated ? r->AddBool(message, field, value) : r->SetBool(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_INT32: {
        int32_t value;
        if (!absl::SimpleAtoi(text, &value)) return bad("a 32-bit integer");
        repeated ? r->AddInt32(message, field, value) : r->SetInt32(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_INT64: {
        int64_t value;
        if (!absl::SimpleAtoi(text, &value)) return bad("a 64-bit integer");
        repeated ? r->AddInt64(message, field, value) : r->SetInt64(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_UINT32: {
        uint32_t value;
        if (!absl::SimpleAtoi(text, &value)) return bad("an unsigned 32-bit integer");
        repeated ? r->AddUInt32(message, field, value) : r->SetUInt32(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t value;
        if (!absl::SimpleAtoi(text, &value)) return bad("an unsigned 64-bit integer");
        repeated ? r->AddUInt64(message, field, value) : r->SetUInt64(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_FLOAT:
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        double value;
        if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
          return bad("a finite number");
        }
        if (field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
          if (std::fabs(value) > std::numeric_limits<float>::max()) return bad("a float");
          const float f = static_cast<float>(value);
          repeated ? r->AddFloat(message, field, f) : r->SetFloat(message, field, f);
        } else {
          repeated ? r->AddDouble(message, field, value) : r->SetDouble(message, field, value);
        }
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_ENUM: {
        const auto* value = field->enum_type()->FindValueByName(text);
        if (value == nullptr) return bad(absl::StrCat("a value of ", field->enum_type()->name()));
        repeated ? r->AddEnum(message, field, value) : r->SetEnum(message, field, value);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
    return Invalid(where, path, "unsupported field type");
  }

 private:
  std::string source_;
  absl::flat_hash_map<std::string, std::string>* origin_;
};

absl::StatusOr<YAML::Node> LoadYaml(std::string_view yaml, const std::string& source_name) {
  try {
    return YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_name), ":", e.mark.line + 1,
                                                   ":", e.mark.column + 1, ": ", e.msg));
  }
}

}  // namespace

absl::Status ConfigBuilder::ParseYaml(std::string_view yaml, std::string_view source_name) {
  KBITD_ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(yaml, std::string(source_name)));
  try {
    YamlWalker walker(std::string(source_name), &origin_);
    return walker.Walk(root, &config_, "");
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_name), ": ", e.what()));
  }
}

absl::Status ConfigBuilder::ParseYamlFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("config file: ", std::string(text.status().message())));
  }
  return ParseYaml(*text, path);
}

absl::Status ConfigBuilder::Override(std::string_view path, std::string_view value) {
  const std::string source =
      absl::StrCat("flag --set ", std::string(path), "=", std::string(value));
  std::vector<std::string> parts = absl::StrSplit(std::string(path), '.');
  google::protobuf::Message* message = &config_;
  for (size_t i = 0; i < parts.size(); ++i) {
    const FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(parts[i]);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown key '", parts[i], "'"));
    }
    const bool last = i + 1 == parts.size();
    if (!last) {
      if (field->is_repeated() || field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": '", parts[i], "' has no sub-keys settable by a flag"));
      }
      message = message->GetReflection()->MutableMessage(message, field);
      continue;
    }
    KBITD_ASSIGN_OR_RETURN(YAML::Node node, LoadYaml(value, source));
    try {
      YamlWalker walker(source, &origin_);
      return walker.Field(node, message, field, std::string(path));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": empty key"));
}

absl::StatusOr<v1::Config> ConfigBuilder::Build() && {
  KBITD_RETURN_IF_ERROR(FinalizeConfig(&config_, origin_));
  return std::move(config_);
}

}  // namespace kbitd::server
