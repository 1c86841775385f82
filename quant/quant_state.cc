#include "quant/quant_state.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_8bit.h"
#include "quant/codebooks.h"
#include "quant/int8_rowwise.h"
#include "quant/state_dict_internal.h"

namespace kbitd::quant {
namespace {

using internal::Expect;
using internal::MakeTensor;
using internal::Numel;
using internal::ShapeString;
using internal::Values;

constexpr char kQuantStateKey[] = "quant_state.bitsandbytes__";
constexpr size_t kQuantStateKeySize = sizeof(kQuantStateKey) - 1;

bool IsFourBit(QuantType type) { return type == QuantType::kNf4 || type == QuantType::kFp4; }

// The quant_map bnb serializes. For fp4 its entry 8 is +0.0 (get_4bit_type builds the table from
// the integer literal -0), unlike the kernels' code 8, which dequantizes to -0.0 (measured with
// bnb 0.50.2, tests/data/quant/sd_linear4bit_fp4_bf16storage).
std::vector<float> SerializedQuantMap(QuantType type) {
  const auto& lut = type == QuantType::kNf4 ? Nf4Code() : Fp4Code();
  std::vector<float> map(lut.begin(), lut.end());
  if (type == QuantType::kFp4) map[8] = 0.0f;
  return map;
}

absl::StatusOr<QuantState> FourBitFromStateDict(
    const std::map<std::string, const NamedTensor*>& by_suffix, const std::string& weight_name,
    const NamedTensor& json_tensor, const std::string& type_name) {
  QuantState state;
  KBITD_ASSIGN_OR_RETURN(FourBitType four, FourBitTypeFromName(type_name));
  state.type = four == FourBitType::kNf4 ? QuantType::kNf4 : QuantType::kFp4;
  const std::string text(json_tensor.bytes.begin(), json_tensor.bytes.end());
  auto parsed = ParseJson(text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", json_tensor.name, ": invalid JSON: ", parsed.status().message()));
  }
  const JsonValue& json = *parsed;
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", json_tensor.name, ": not a JSON object"));
  }
  static const char* const kAllowed[] = {"quant_type",   "blocksize",        "dtype",
                                         "shape",        "nested_blocksize", "nested_dtype",
                                         "nested_offset"};
  for (const auto& [key, value] : json.object()) {
    bool known = false;
    for (const char* allowed : kAllowed) known |= key == allowed;
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", json_tensor.name, ": unknown quant-state key \"", key, "\""));
    }
  }
  auto field_error = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", json_tensor.name, ": ", s.message()));
  };
  auto quant_type = json.GetString("quant_type");
  if (!quant_type.ok()) return field_error(quant_type.status());
  if (*quant_type != type_name) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", json_tensor.name, ": quant_type \"",
                                                   *quant_type,
                                                   "\" does not match the key suffix"));
  }
  auto blocksize = json.GetInteger("blocksize");
  if (!blocksize.ok()) return field_error(blocksize.status());
  state.blocksize = *blocksize;
  if (auto s = Validate4bitBlocksize(state.blocksize); !s.ok()) return field_error(s);
  auto dtype = json.GetString("dtype");
  if (!dtype.ok()) return field_error(dtype.status());
  auto scalar = ScalarTypeFromTorchName(*dtype);
  if (!scalar.ok() || !IsFloatingPoint(*scalar) || *scalar == ScalarType::kFloat64) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", json_tensor.name, ": unsupported dtype \"", *dtype, "\""));
  }
  state.dtype = *scalar;
  const JsonValue* shape = json.Find("shape");
  if (shape == nullptr || !shape->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", json_tensor.name, ": missing shape list"));
  }
  for (const JsonValue& d : shape->array()) {
    if (!d.is_integer() || d.integer_value() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", json_tensor.name, ": bad shape"));
    }
    state.shape.push_back(d.integer_value());
  }
  const int64_t n = state.numel();
  const int64_t nblocks = NumBlocks(n, state.blocksize);

  auto find = [&](const std::string& suffix) -> const NamedTensor* {
    auto it = by_suffix.find(suffix);
    return it == by_suffix.end() ? nullptr : it->second;
  };
  const NamedTensor* weight = find("");
  if (weight == nullptr) return absl::NotFoundError(absl::StrCat("missing tensor ", weight_name));
  state.quant_storage = weight->dtype;
  const int64_t itemsize = static_cast<int64_t>(ScalarTypeSize(weight->dtype));
  if (weight->dtype != ScalarType::kUInt8 && !IsFloatingPoint(weight->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", weight_name, ": quant_storage ",
                                                   std::string(TorchDtypeName(weight->dtype)),
                                                   " is not supported"));
  }
  KBITD_RETURN_IF_ERROR(Expect(*weight, weight->dtype, {(n + 1) / (2 * itemsize), 1}));
  if (static_cast<int64_t>(weight->bytes.size()) < Packed4bitBytes(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", weight_name, ": ", weight->bytes.size(), " bytes cannot hold ", n,
                     " 4-bit values of shape ", ShapeString(state.shape)));
  }
  state.data.assign(weight->bytes.begin(), weight->bytes.begin() + Packed4bitBytes(n));

  const NamedTensor* absmax = find("absmax");
  if (absmax == nullptr)
    return absl::NotFoundError(absl::StrCat("missing tensor ", weight_name, ".absmax"));
  const NamedTensor* quant_map = find("quant_map");
  if (quant_map != nullptr) {
    KBITD_RETURN_IF_ERROR(Expect(*quant_map, ScalarType::kFloat32, {16}));
    state.code = Values<float>(*quant_map);
  } else {
    state.code = SerializedQuantMap(state.type);
  }
  const NamedTensor* nested_absmax = find("nested_absmax");
  const bool nested = nested_absmax != nullptr;
  const bool json_nested = json.Find("nested_offset") != nullptr;
  if (nested != json_nested) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", json_tensor.name, ": nested_offset ", json_nested ? "present" : "missing",
        " but ", weight_name, ".nested_absmax ", nested ? "present" : "missing"));
  }
  if (!nested) {
    KBITD_RETURN_IF_ERROR(Expect(*absmax, ScalarType::kFloat32, {nblocks}));
    state.absmax = Values<float>(*absmax);
    if (find("nested_quant_map") != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(weight_name, ".nested_quant_map without nested_absmax"));
    }
    return state;
  }
  NestedAbsmax nest;
  KBITD_RETURN_IF_ERROR(Expect(*absmax, ScalarType::kUInt8, {nblocks}));
  nest.codes = absmax->bytes;
  auto nested_blocksize = json.GetInteger("nested_blocksize");
  if (!nested_blocksize.ok()) return field_error(nested_blocksize.status());
  nest.nested_blocksize = *nested_blocksize;
  if (nest.nested_blocksize != kNestedBlocksize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", json_tensor.name, ": nested_blocksize ", nest.nested_blocksize, " is not 256"));
  }
  auto nested_dtype = json.GetString("nested_dtype");
  if (!nested_dtype.ok()) return field_error(nested_dtype.status());
  if (*nested_dtype != "float32") {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", json_tensor.name, ": nested_dtype \"",
                                                   *nested_dtype, "\" is not float32"));
  }
  auto offset = json.GetNumber("nested_offset");
  if (!offset.ok()) return field_error(offset.status());
  nest.offset = static_cast<float>(*offset);
  KBITD_RETURN_IF_ERROR(
      Expect(*nested_absmax, ScalarType::kFloat32, {NumBlocks(nblocks, kNestedBlocksize)}));
  nest.nested_absmax = Values<float>(*nested_absmax);
  const NamedTensor* nested_map = find("nested_quant_map");
  if (nested_map == nullptr) {
    return absl::NotFoundError(absl::StrCat("missing tensor ", weight_name, ".nested_quant_map"));
  }
  KBITD_RETURN_IF_ERROR(Expect(*nested_map, ScalarType::kFloat32, {256}));
  nest.nested_code = Values<float>(*nested_map);
  state.nested = std::move(nest);
  return state;
}

absl::StatusOr<QuantState> Int8FromStateDict(const NamedTensor& weight, const NamedTensor& scb,
                                             const NamedTensor* format) {
  if (format != nullptr) {
    if (format->dtype != ScalarType::kUInt8 || format->bytes.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", format->name, ": expected a uint8 scalar"));
    }
    const int value = format->bytes[0];
    if (value != 0) {
      static const char* const kNames[] = {"row", "col32", "col_turing", "col_ampere"};
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", format->name, ": weight_format ", value, " (",
          value < 4 ? kNames[value] : "unknown",
          ") is a tiled layout of bitsandbytes < 0.45; only 'row' (0) is supported, re-save the "
          "checkpoint with a current bitsandbytes"));
    }
  }
  if (weight.dtype != ScalarType::kInt8 || weight.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", weight.name, ": expected I8 [out, in], got ",
        std::string(SafetensorsDtypeName(weight.dtype)), " ", ShapeString(weight.shape)));
  }
  KBITD_RETURN_IF_ERROR(Expect(weight, ScalarType::kInt8, weight.shape));
  KBITD_RETURN_IF_ERROR(Expect(scb, ScalarType::kFloat32, {weight.shape[0]}));
  QuantState state;
  state.type = QuantType::kInt8Rowwise;
  state.shape = weight.shape;
  state.dtype = ScalarType::kFloat16;
  state.quant_storage = ScalarType::kInt8;
  state.data = weight.bytes;
  state.scb = Values<float>(scb);
  return state;
}

}  // namespace

int64_t QuantState::numel() const { return Numel(shape); }

absl::StatusOr<QuantState> QuantizeToState(const void* data, ScalarType dtype,
                                           std::vector<int64_t> shape,
                                           const QuantizeOptions& options) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("QuantizeToState: negative dimension in shape");
  }
  QuantState state;
  state.type = options.type;
  state.shape = std::move(shape);
  state.dtype = dtype;
  state.blocksize = options.blocksize;
  const int64_t n = state.numel();
  switch (options.type) {
    case QuantType::kNf4:
    case QuantType::kFp4: {
      const FourBitType four =
          options.type == QuantType::kNf4 ? FourBitType::kNf4 : FourBitType::kFp4;
      if (options.quant_storage != ScalarType::kUInt8 && !IsFloatingPoint(options.quant_storage)) {
        return absl::InvalidArgumentError(
            absl::StrCat("quant_storage ", std::string(TorchDtypeName(options.quant_storage)),
                         " is not supported"));
      }
      state.quant_storage = options.quant_storage;
      state.data.resize(Packed4bitBytes(n));
      std::vector<float> absmax(NumBlocks(n, options.blocksize));
      KBITD_RETURN_IF_ERROR(
          Quantize4bit(four, data, dtype, n, options.blocksize, state.data.data(), absmax.data()));
      state.code = SerializedQuantMap(options.type);
      if (options.double_quant && !absmax.empty()) {
        KBITD_ASSIGN_OR_RETURN(
            NestedAbsmax nested,
            DoubleQuantizeAbsmax(absmax.data(), static_cast<int64_t>(absmax.size())));
        state.nested = std::move(nested);
      } else {
        state.absmax = std::move(absmax);
      }
      return state;
    }
    case QuantType::kInt8Blockwise: {
      state.quant_storage = ScalarType::kUInt8;
      state.data.resize(n);
      state.absmax.resize(NumBlocks(n, std::max<int64_t>(options.blocksize, 1)));
      const auto& map = DynamicMap();
      state.code.assign(map.begin(), map.end());
      KBITD_RETURN_IF_ERROR(QuantizeBlockwise8bit(state.code.data(), data, dtype, n,
                                                  options.blocksize, state.data.data(),
                                                  state.absmax.data()));
      return state;
    }
    case QuantType::kInt8Rowwise: {
      if (state.shape.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("int8 rowwise quantization needs a 2-D [out, in] weight, got shape ",
                         ShapeString(state.shape)));
      }
      state.dtype = ScalarType::kFloat16;  // LLM.int8 goes through fp16 (bnb-spec §6.1)
      state.quant_storage = ScalarType::kInt8;
      state.data.resize(n);
      state.scb.resize(state.shape[0]);
      KBITD_RETURN_IF_ERROR(QuantizeRowwiseInt8(data, dtype, state.shape[0], state.shape[1],
                                                reinterpret_cast<int8_t*>(state.data.data()),
                                                state.scb.data()));
      return state;
    }
    case QuantType::kGptq:
      return absl::UnimplementedError(
          "quantizing to GPTQ is not implemented (GPTQ checkpoints load as they are)");
  }
  return absl::InvalidArgumentError("unknown quant type");
}

absl::StatusOr<std::string> QuantStateJson(const QuantState& state) {
  if (!IsFourBit(state.type)) {
    return absl::InvalidArgumentError("quant-state JSON exists only for nf4/fp4 states");
  }
  JsonValue json = JsonValue::MakeObject();
  json.Set("quant_type", JsonValue::String(state.type == QuantType::kNf4 ? "nf4" : "fp4"));
  json.Set("blocksize", JsonValue::Integer(state.blocksize));
  json.Set("dtype", JsonValue::String(std::string(TorchDtypeName(state.dtype))));
  JsonValue shape = JsonValue::MakeArray();
  for (int64_t d : state.shape) shape.mutable_array().push_back(JsonValue::Integer(d));
  json.Set("shape", std::move(shape));
  if (state.nested.has_value()) {
    json.Set("nested_blocksize", JsonValue::Integer(state.nested->nested_blocksize));
    json.Set("nested_dtype", JsonValue::String("float32"));
    // offset.item(): the float32 widened to double, written as Python repr.
    json.Set("nested_offset", JsonValue::Number(static_cast<double>(state.nested->offset)));
  }
  return json.Write();
}

absl::StatusOr<std::vector<NamedTensor>> ToStateDict(const QuantState& state,
                                                     std::string_view prefix) {
  const std::string p(prefix);
  std::vector<NamedTensor> out;
  if (state.type == QuantType::kInt8Rowwise) {
    if (state.shape.size() != 2)
      return absl::InvalidArgumentError("int8 rowwise state must be 2-D");
    out.push_back(MakeTensor(p + ".weight", ScalarType::kInt8, state.shape, state.data));
    out.push_back(MakeTensor(p + ".SCB", ScalarType::kFloat32, {state.shape[0]}, state.scb));
    out.push_back(
        MakeTensor(p + ".weight_format", ScalarType::kUInt8, {}, std::vector<uint8_t>{0}));
    return out;
  }
  if (!IsFourBit(state.type)) {
    return absl::UnimplementedError(absl::StrCat(std::string(QuantTypeName(state.type)),
                                                 " weights have no bitsandbytes module "
                                                 "serialization"));
  }
  const int64_t n = state.numel();
  const int64_t itemsize = static_cast<int64_t>(ScalarTypeSize(state.quant_storage));
  if (Packed4bitBytes(n) % itemsize != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot store ", n, " 4-bit values in quant_storage ",
                     std::string(TorchDtypeName(state.quant_storage)), ": ", Packed4bitBytes(n),
                     " bytes are not a multiple of ", itemsize));
  }
  const std::string w = p + ".weight";
  out.push_back(MakeTensor(w, state.quant_storage, {Packed4bitBytes(n) / itemsize, 1}, state.data));
  if (state.nested.has_value()) {
    out.push_back(MakeTensor(w + ".absmax", ScalarType::kUInt8,
                             {static_cast<int64_t>(state.nested->codes.size())},
                             state.nested->codes));
  } else {
    out.push_back(MakeTensor(w + ".absmax", ScalarType::kFloat32,
                             {static_cast<int64_t>(state.absmax.size())}, state.absmax));
  }
  const std::vector<float> code = state.code.empty() ? SerializedQuantMap(state.type) : state.code;
  out.push_back(MakeTensor(w + ".quant_map", ScalarType::kFloat32, {16}, code));
  if (state.nested.has_value()) {
    out.push_back(MakeTensor(w + ".nested_absmax", ScalarType::kFloat32,
                             {static_cast<int64_t>(state.nested->nested_absmax.size())},
                             state.nested->nested_absmax));
    out.push_back(MakeTensor(w + ".nested_quant_map", ScalarType::kFloat32, {256},
                             state.nested->nested_code));
  }
  KBITD_ASSIGN_OR_RETURN(std::string json, QuantStateJson(state));
  std::vector<uint8_t> json_bytes(json.begin(), json.end());
  out.push_back(MakeTensor(
      w + "." + std::string(kQuantStateKey) + (state.type == QuantType::kNf4 ? "nf4" : "fp4"),
      ScalarType::kUInt8, {static_cast<int64_t>(json_bytes.size())}, json_bytes));
  return out;
}

absl::StatusOr<QuantState> FromStateDict(const std::vector<NamedTensor>& tensors,
                                         std::string_view prefix) {
  const std::string weight_name = std::string(prefix) + ".weight";
  const std::string sub_prefix = weight_name + ".";
  std::map<std::string, const NamedTensor*> by_suffix;
  const NamedTensor* json_tensor = nullptr;
  std::string type_name;
  const NamedTensor* scb = nullptr;
  const NamedTensor* format = nullptr;
  for (const NamedTensor& t : tensors) {
    if (t.name == weight_name) {
      by_suffix[""] = &t;
    } else if (t.name == std::string(prefix) + ".SCB") {
      scb = &t;
    } else if (t.name == std::string(prefix) + ".weight_format") {
      format = &t;
    } else if (absl::StartsWith(t.name, sub_prefix)) {
      const std::string suffix = t.name.substr(sub_prefix.size());
      if (absl::StartsWith(suffix, kQuantStateKey)) {
        if (json_tensor != nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("two quant_state tensors for ", weight_name));
        }
        json_tensor = &t;
        type_name = suffix.substr(kQuantStateKeySize);
        continue;
      }
      if (suffix != "absmax" && suffix != "quant_map" && suffix != "nested_absmax" &&
          suffix != "nested_quant_map") {
        return absl::InvalidArgumentError(absl::StrCat("unknown quantization tensor ", t.name));
      }
      by_suffix[suffix] = &t;
    }
  }
  if (json_tensor != nullptr) {
    if (scb != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(weight_name, " has both 4-bit and int8 state"));
    }
    if (json_tensor->dtype != ScalarType::kUInt8) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", json_tensor->name, ": expected U8 JSON bytes"));
    }
    return FourBitFromStateDict(by_suffix, weight_name, *json_tensor, type_name);
  }
  if (scb != nullptr) {
    if (by_suffix.size() != 1 || by_suffix.count("") == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(weight_name, ": int8 state needs exactly ", weight_name, " next to SCB"));
    }
    return Int8FromStateDict(*by_suffix[""], *scb, format);
  }
  if (by_suffix.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(weight_name, " has 4-bit tensors but no ",
                                                   sub_prefix, kQuantStateKey, "nf4|fp4 tensor"));
  }
  return absl::NotFoundError(absl::StrCat("no bitsandbytes quantization state for ", weight_name));
}

absl::Status DequantizeState(const QuantState& state, ScalarType output_type, void* output) {
  const int64_t n = state.numel();
  switch (state.type) {
    case QuantType::kNf4:
    case QuantType::kFp4: {
      const FourBitType four =
          state.type == QuantType::kNf4 ? FourBitType::kNf4 : FourBitType::kFp4;
      if (static_cast<int64_t>(state.data.size()) < Packed4bitBytes(n)) {
        return absl::InvalidArgumentError("4-bit state has too few packed bytes");
      }
      const int64_t nblocks = NumBlocks(n, state.blocksize);
      std::vector<float> absmax = state.absmax;
      if (state.nested.has_value()) {
        absmax.resize(nblocks);
        KBITD_RETURN_IF_ERROR(ReconstructAbsmax(*state.nested, nblocks, absmax.data()));
      } else if (static_cast<int64_t>(absmax.size()) != nblocks) {
        return absl::InvalidArgumentError(absl::StrCat("4-bit state: absmax has ", absmax.size(),
                                                       " entries, expected ", nblocks));
      }
      return Dequantize4bit(four, state.data.data(), absmax.data(), n, state.blocksize, output_type,
                            output);
    }
    case QuantType::kInt8Blockwise:
      if (state.code.size() != 256 || static_cast<int64_t>(state.data.size()) != n ||
          static_cast<int64_t>(state.absmax.size()) != NumBlocks(n, state.blocksize)) {
        return absl::InvalidArgumentError("8-bit blockwise state has inconsistent sizes");
      }
      return DequantizeBlockwise8bit(state.code.data(), state.data.data(), state.absmax.data(), n,
                                     state.blocksize, output_type, output);
    case QuantType::kInt8Rowwise:
      if (state.shape.size() != 2 || static_cast<int64_t>(state.data.size()) != n ||
          static_cast<int64_t>(state.scb.size()) != state.shape[0]) {
        return absl::InvalidArgumentError("int8 rowwise state has inconsistent sizes");
      }
      return DequantizeRowwiseInt8(reinterpret_cast<const int8_t*>(state.data.data()),
                                   state.scb.data(), state.shape[0], state.shape[1], output_type,
                                   output);
    case QuantType::kGptq:
      return internal::DequantizeGptqState(state, output_type, output);
  }
  return absl::InternalError("unknown quant type");
}

}  // namespace kbitd::quant

namespace kbitd::quant {

std::string_view QuantTypeName(QuantType type) {
  switch (type) {
    case QuantType::kNf4:
      return "nf4";
    case QuantType::kFp4:
      return "fp4";
    case QuantType::kInt8Blockwise:
      return "int8_blockwise";
    case QuantType::kInt8Rowwise:
      return "int8_rowwise";
    case QuantType::kGptq:
      return "gptq";
  }
  return "unknown";
}

}  // namespace kbitd::quant
