// Reads the bitsandbytes golden data under tests/data/quant/ (written by
// tools/golden/make_quant_goldens.py on a GPU with bnb 0.50.2): manifest.json lists cases, each
// with named tensors stored as raw little-endian .bin files. Test-only helper.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/json.h"
#include "gtest/gtest.h"

namespace kbitd::quant::golden {

inline std::string DataDir() {
  const char* env = std::getenv("KBITD_TEST_DATA_DIR");
  return std::string(env != nullptr ? env : KBITD_TEST_DATA_DIR) + "/quant";
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Tensor {
  ScalarType dtype = ScalarType::kUInt8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  template <typename T>
  std::vector<T> As() const {
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
  // Elements of a float tensor (F32/F16/BF16) widened to float.
  std::vector<float> Floats() const {
    std::vector<float> out(numel());
    for (int64_t i = 0; i < numel(); ++i) out[i] = LoadAsFloat(bytes.data(), dtype, i);
    return out;
  }
};

class Goldens {
 public:
  static const Goldens& Get() {
    static const Goldens* goldens = new Goldens();
    return *goldens;
  }
  const JsonValue& manifest() const { return manifest_; }

  std::vector<const JsonValue*> CasesOfKind(const std::string& kind) const {
    std::vector<const JsonValue*> out;
    for (const JsonValue& c : manifest_.Find("cases")->array()) {
      if (c.Find("kind")->string_value() == kind) out.push_back(&c);
    }
    return out;
  }
  const JsonValue* Case(const std::string& name) const {
    for (const JsonValue& c : manifest_.Find("cases")->array()) {
      if (c.Find("name")->string_value() == name) return &c;
    }
    return nullptr;
  }

 private:
  Goldens() {
    auto parsed = ParseJson(ReadFile(DataDir() + "/manifest.json"));
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    if (parsed.ok()) manifest_ = *std::move(parsed);
  }
  JsonValue manifest_;
};

inline bool HasTensor(const JsonValue& c, const std::string& field) {
  return c.Find("tensors")->Find(field) != nullptr;
}

inline Tensor LoadTensor(const JsonValue& c, const std::string& field) {
  Tensor t;
  const JsonValue* e = c.Find("tensors")->Find(field);
  EXPECT_NE(e, nullptr) << c.Find("name")->string_value() << " has no tensor " << field;
  if (e == nullptr) return t;
  t.dtype = *ScalarTypeFromSafetensorsName(e->Find("dtype")->string_value());
  for (const JsonValue& d : e->Find("shape")->array()) t.shape.push_back(d.integer_value());
  const std::string data = ReadFile(DataDir() + "/" + e->Find("file")->string_value());
  t.bytes.assign(data.begin(), data.end());
  EXPECT_EQ(static_cast<int64_t>(t.bytes.size()), t.numel() * ScalarTypeSize(t.dtype)) << field;
  return t;
}

inline ScalarType DtypeOf(const JsonValue& c) {
  return *ScalarTypeFromTorchName(c.Find("dtype")->string_value());
}

// True when some x' within `ulps` ulps of x encodes as `want`: the explanation required for an
// element where bnb's fast-math reciprocal (<= 1 ulp, then one product rounding) decided
// differently from kbitd's IEEE reciprocal at a threshold.
template <typename Encode>
bool EncodesNearby(float x, int ulps, int want, Encode encode) {
  float lo = x, hi = x;
  for (int i = 0; i < ulps; ++i) {
    lo = std::nextafter(lo, -INFINITY);
    hi = std::nextafter(hi, INFINITY);
    if (static_cast<int>(encode(lo)) == want || static_cast<int>(encode(hi)) == want) return true;
  }
  return false;
}

// Bit equality for float outputs, with any NaN equal to any NaN.
inline bool SameFloat(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || FloatBits(a) == FloatBits(b);
}

}  // namespace kbitd::quant::golden
