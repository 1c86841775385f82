#include "runtime/model_weights.h"

#include <vector>

#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

TEST(ModelWeightsTest, RowScalesEqualPerBlockScalesAcrossNestedGroups) {
  LinearWeight w;
  w.nested_blocksize = 4;
  std::vector<uint8_t> codes(40);
  std::vector<float> nested_absmax(10);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i * 37 % 256);
  for (size_t i = 0; i < nested_absmax.size(); ++i) nested_absmax[i] = 0.5f + 0.25f * i;
  for (int i = 0; i < 256; ++i) w.nested_code[i] = (i - 128) / 127.0f;
  w.absmax_codes = Tensor::Host(codes.data(), ScalarType::kUInt8, {40});
  w.nested_absmax = Tensor::Host(nested_absmax.data(), ScalarType::kFloat32, {10});
  w.nested_offset = 0.125f;
  ASSERT_TRUE(w.nested());
  for (int64_t first : {0, 3, 4, 7, 13}) {
    std::vector<float> row(17);
    FourBitScales(w, first, 17, row.data());
    for (int64_t b = 0; b < 17; ++b) EXPECT_EQ(row[b], FourBitScale(w, first + b)) << first + b;
  }
  // Block 5 is in nested group 1: code 5*37 % 256 = 185 -> (185-128)/127 * 0.75 + 0.125.
  EXPECT_FLOAT_EQ(FourBitScale(w, 5), 57.0f / 127.0f * 0.75f + 0.125f);
}

TEST(ModelWeightsTest, ResidentBytesCountWhatEachFormatStores) {
  std::vector<uint8_t> bytes(4096);
  LinearWeight dense;
  dense.out_features = 8;
  dense.in_features = 16;
  dense.dense = Tensor::Host(bytes.data(), ScalarType::kBFloat16, {8, 16});
  EXPECT_TRUE(dense.is_dense());
  EXPECT_EQ(dense.resident_bytes(), 8 * 16 * 2);

  LinearWeight nf4;
  nf4.quant_type = quant::QuantType::kNf4;
  nf4.out_features = 8;
  nf4.in_features = 16;
  nf4.blocksize = 64;
  nf4.packed = Tensor::Host(bytes.data(), ScalarType::kUInt8, {64});
  nf4.absmax = Tensor::Host(bytes.data(), ScalarType::kFloat32, {2});
  EXPECT_TRUE(nf4.is_four_bit());
  EXPECT_FALSE(nf4.nested());
  EXPECT_EQ(nf4.resident_bytes(), 64 + 2 * 4);
  // Double quant: uint8 codes per block and one float per nested group instead of fp32 absmax.
  nf4.absmax = Tensor();
  nf4.absmax_codes = Tensor::Host(bytes.data(), ScalarType::kUInt8, {2});
  nf4.nested_absmax = Tensor::Host(bytes.data(), ScalarType::kFloat32, {1});
  EXPECT_EQ(nf4.resident_bytes(), 64 + 2 + 4);

  LinearWeight int8;
  int8.quant_type = quant::QuantType::kInt8Rowwise;
  int8.out_features = 8;
  int8.in_features = 16;
  int8.cb = Tensor::Host(bytes.data(), ScalarType::kInt8, {8, 16});
  int8.scb = Tensor::Host(bytes.data(), ScalarType::kFloat32, {8});
  EXPECT_EQ(int8.resident_bytes(), 8 * 16 + 8 * 4);
}

TEST(ModelWeightsTest, AWeightIsOnTheDeviceOfItsData) {
  std::vector<uint8_t> bytes(64);
  LinearWeight w;
  EXPECT_TRUE(w.device().is_cpu());
  w.quant_type = quant::QuantType::kFp4;
  w.packed = Tensor::Make(bytes.data(), ScalarType::kUInt8, {64}, Device::Cuda(1));
  EXPECT_EQ(w.device(), Device::Cuda(1));
  // Any of its tensors tells: a weight whose only data so far is its bias is where the bias is.
  LinearWeight bias_only;
  bias_only.bias = Tensor::Make(bytes.data(), ScalarType::kFloat32, {16}, Device::Cuda(2));
  EXPECT_EQ(bias_only.device(), Device::Cuda(2));
  EXPECT_EQ(Tensor().bytes(), 0);  // an undefined tensor holds nothing
}

}  // namespace
}  // namespace kbitd::runtime
