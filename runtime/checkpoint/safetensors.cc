#include "runtime/checkpoint/safetensors.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace kbitd::runtime {
namespace {

struct DtypeBits {
  std::string_view name;
  int bits;
};

// safetensors' Dtype enum (safetensors/src/tensor.rs, `bitsize()`), including dtypes kbitd cannot
// compute with: a header naming them is still valid and its other tensors stay readable.
constexpr DtypeBits kSafetensorsDtypes[] = {
    {"BOOL", 8},        {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},    {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},    {"F32", 32},    {"C64", 64},    {"F64", 64},
    {"I64", 64},        {"U64", 64},
};

absl::Status Invalid(std::string_view label, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(label), ": ", message));
}

absl::Status InvalidTensor(std::string_view label, const std::string& tensor,
                           const std::string& message) {
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(label), ": tensor \"", tensor, "\": ", message));
}

// Reads a non-negative JSON integer; `what` names the field in errors.
absl::StatusOr<uint64_t> NonNegativeInteger(const JsonValue& value, std::string_view label,
                                            const std::string& tensor, std::string_view what) {
  if (!value.is_integer() || value.integer_value() < 0) {
    return InvalidTensor(
        label, tensor,
        absl::StrCat(std::string(what), " must hold non-negative integers that fit in int64"));
  }
  return static_cast<uint64_t>(value.integer_value());
}

absl::StatusOr<SafetensorsTensorInfo> ParseTensorEntry(std::string_view label,
                                                       const std::string& name,
                                                       const JsonValue& entry) {
  if (!entry.is_object()) return InvalidTensor(label, name, "entry must be a JSON object");
  for (const auto& [key, unused] : entry.object()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return InvalidTensor(label, name, absl::StrCat("unknown field \"", key, "\""));
    }
  }
  const JsonValue* dtype = entry.Find("dtype");
  const JsonValue* shape = entry.Find("shape");
  const JsonValue* offsets = entry.Find("data_offsets");
  if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
    return InvalidTensor(label, name, "entry needs \"dtype\", \"shape\" and \"data_offsets\"");
  }
  if (!dtype->is_string()) return InvalidTensor(label, name, "\"dtype\" must be a string");
  std::optional<int> bits = SafetensorsDtypeBits(dtype->string_value());
  if (!bits) {
    return InvalidTensor(label, name,
                         absl::StrCat("unknown dtype \"", dtype->string_value(), "\""));
  }
  if (!shape->is_array()) return InvalidTensor(label, name, "\"shape\" must be an array");
  if (!offsets->is_array() || offsets->array().size() != 2) {
    return InvalidTensor(label, name, "\"data_offsets\" must be [begin, end]");
  }

  SafetensorsTensorInfo info;
  info.name = name;
  info.dtype_name = dtype->string_value();
  if (auto type = ScalarTypeFromSafetensorsName(info.dtype_name); type.ok()) info.dtype = *type;

  // Checked product, in the reference's order (a zero later in the shape does not excuse an
  // overflow earlier), then x bits; both must fit in int64 so every later size is representable.
  constexpr uint64_t kMax = static_cast<uint64_t>(INT64_MAX);
  uint64_t elements = 1;
  for (const JsonValue& dim : shape->array()) {
    KBITD_ASSIGN_OR_RETURN(uint64_t d, NonNegativeInteger(dim, label, name, "\"shape\""));
    if (d != 0 && elements > kMax / d) {
      return InvalidTensor(label, name, "shape product overflows");
    }
    elements *= d;
    info.shape.push_back(static_cast<int64_t>(d));
  }
  if (elements > kMax / static_cast<uint64_t>(*bits)) {
    return InvalidTensor(label, name, "shape x dtype size overflows");
  }
  const uint64_t total_bits = elements * static_cast<uint64_t>(*bits);
  if (total_bits % 8 != 0) {
    return InvalidTensor(
        label, name,
        absl::StrCat(elements, " elements of ", info.dtype_name, " do not fill whole bytes"));
  }
  KBITD_ASSIGN_OR_RETURN(info.begin,
                         NonNegativeInteger(offsets->array()[0], label, name, "\"data_offsets\""));
  KBITD_ASSIGN_OR_RETURN(info.end,
                         NonNegativeInteger(offsets->array()[1], label, name, "\"data_offsets\""));
  if (info.end < info.begin) {
    return InvalidTensor(
        label, name,
        absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] end before they begin"));
  }
  if (info.end - info.begin != total_bits / 8) {
    return InvalidTensor(
        label, name,
        absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] span ", info.end - info.begin,
                     " bytes but shape and dtype need ", total_bits / 8));
  }
  return info;
}

absl::StatusOr<SafetensorsMetadata> ParseMetadata(std::string_view label, const JsonValue& value) {
  if (!value.is_object()) return Invalid(label, "\"__metadata__\" must be a JSON object");
  SafetensorsMetadata metadata;
  for (const auto& [key, item] : value.object()) {
    if (!item.is_string()) {
      return Invalid(label,
                     absl::StrCat("\"__metadata__\" value of \"", key, "\" must be a string"));
    }
    metadata.emplace_back(key, item.string_value());
  }
  return metadata;
}

}  // namespace

int64_t SafetensorsTensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow
  return n;
}

std::optional<int> SafetensorsDtypeBits(std::string_view dtype_name) {
  for (const auto& entry : kSafetensorsDtypes) {
    if (entry.name == dtype_name) return entry.bits;
  }
  return std::nullopt;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file,
                                                         std::string_view label,
                                                         const SafetensorsLimits& limits) {
  if (file.size() < 8) {
    return Invalid(label, absl::StrCat("file is ", file.size(),
                                       " bytes, too short for the 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[i]);  // little-endian
  if (n > limits.max_header_bytes) {
    return Invalid(label, absl::StrCat("header length ", n, " exceeds the limit of ",
                                       limits.max_header_bytes, " bytes"));
  }
  if (n > file.size() - 8) {
    return Invalid(label, absl::StrCat("header length ", n, " runs past the end of the ",
                                       file.size(), "-byte file (truncated?)"));
  }
  std::string_view text = file.substr(8, n);
  if (!IsValidUtf8(text)) return Invalid(label, "header is not valid UTF-8");
  auto json = ParseJson(text);
  if (!json.ok()) {
    return Invalid(label, absl::StrCat("header is not valid JSON: ", json.status().message()));
  }
  if (!json->is_object()) return Invalid(label, "header must be a JSON object");

  SafetensorsHeader header;
  header.header_size = n;
  for (const auto& [key, value] : json->object()) {
    if (key == "__metadata__") {
      KBITD_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(label, value));
      continue;
    }
    KBITD_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, ParseTensorEntry(label, key, value));
    header.tensors.push_back(std::move(info));
  }

  // Tensors must tile the data region exactly (safetensors Metadata::validate).
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t expected = 0;
  for (const SafetensorsTensorInfo& info : header.tensors) {
    if (info.begin != expected) {
      return InvalidTensor(
          label, info.name,
          absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] ",
                       info.begin < expected ? "overlap the previous tensor" : "leave a gap",
                       " (expected to start at ", expected, ")"));
    }
    expected = info.end;
  }
  const uint64_t data_size = file.size() - 8 - n;
  if (expected != data_size) {
    return Invalid(label,
                   expected < data_size
                       ? absl::StrCat("data region has ", data_size - expected,
                                      " trailing bytes after the last tensor")
                       : absl::StrCat("tensors need ", expected, " data bytes but the file has ",
                                      data_size, " (truncated?)"));
  }
  return header;
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool TensorView::IsAligned() const {
  return reinterpret_cast<uintptr_t>(data.data()) % ScalarTypeSize(dtype) == 0;
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  by_name_.resize(header_.tensors.size());
  for (size_t i = 0; i < by_name_.size(); ++i) by_name_[i] = i;
  std::sort(by_name_.begin(), by_name_.end(), [this](size_t a, size_t b) {
    return header_.tensors[a].name < header_.tensors[b].name;
  });
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const SafetensorsLimits& limits) {
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  KBITD_ASSIGN_OR_RETURN(SafetensorsHeader header,
                         ParseSafetensorsHeader(file->bytes(), path, limits));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (size_t i : by_name_) names.push_back(header_.tensors[i].name);
  return names;
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name, [this](size_t i, auto key) {
    return std::string_view(header_.tensors[i].name) < key;
  });
  if (it == by_name_.end() || header_.tensors[*it].name != name) return nullptr;
  return &header_.tensors[*it];
}

absl::StatusOr<TensorView> SafetensorsFile::Get(std::string_view name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": no tensor named \"", std::string(name), "\""));
  }
  return View(*info);
}

absl::StatusOr<TensorView> SafetensorsFile::View(const SafetensorsTensorInfo& info) const {
  if (!info.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": tensor \"", info.name,
                                                   "\" has dtype ", info.dtype_name,
                                                   ", which kbitd does not support"));
  }
  const auto* base = reinterpret_cast<const uint8_t*>(file_->bytes().data());
  TensorView view;
  view.name = info.name;
  view.dtype = *info.dtype;
  view.shape = info.shape;
  view.data = std::span<const uint8_t>(base + header_.data_start() + info.begin, info.size_bytes());
  return view;
}

void SafetensorsFile::WillNeed(const SafetensorsTensorInfo& info) const {
  file_->WillNeed(header_.data_start() + info.begin, info.size_bytes());
}

void SafetensorsFile::DropPages(const SafetensorsTensorInfo& info) const {
  file_->DropPages(header_.data_start() + info.begin, info.size_bytes());
}

}  // namespace kbitd::runtime
