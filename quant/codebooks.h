// bitsandbytes' code books, as binary32 bit patterns so that host and device use the same bits.
// Source: bitsandbytes functional.py get_4bit_type / create_dynamic_map and csrc/kernels.cu
// (dQuantizeNF4, dQuantizeFP4, nf4/fp4 dequantization LUTs); see docs/bnb-spec.md.
#pragma once

#include <array>
#include <cstdint>

namespace kbitd::quant {

// NF4: the code is the index into this table (7 negative values, exact zero at 7, 8 positive).
inline constexpr std::array<uint32_t, 16> kNf4CodeBits = {
    0xBF800000, 0xBF3239B1, 0xBF066B30, 0xBECA32A0, 0xBE91A24D, 0xBE3D353F, 0xBDBA7871, 0x00000000,
    0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A, 0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000};

// NF4 encoder thresholds (exact binary32 midpoints of neighbours): code = #{i : x > t[i]}.
inline constexpr std::array<uint32_t, 15> kNf4ThresholdBits = {
    0xBF591CD8, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC, 0xBD3A7871, 0x3D22FAFF,
    0x3DF64862, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9, 0x3F006D04, 0x3F248DAF, 0x3F5C89DA};

// FP4 (sign bit 3, magnitude index bits 2..0), as the kernels decode it:
// [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3] / 12. Code 8 decodes to
// -0.0; the quant_map tensor bnb serializes has +0.0 there (built from the integer literal -0).
inline constexpr std::array<uint32_t, 16> kFp4CodeBits = {
    0x00000000, 0x3BAAAAAB, 0x3F2AAAAB, 0x3F800000, 0x3EAAAAAB, 0x3F000000, 0x3E2AAAAB, 0x3E800000,
    0x80000000, 0xBBAAAAAB, 0xBF2AAAAB, 0xBF800000, 0xBEAAAAAB, 0xBF000000, 0xBE2AAAAB, 0xBE800000};

// FP4 magnitude thresholds: the literal binary32 values of dQuantizeFP4 (t0, t4, t5 are not exact
// midpoints), ascending. r = #{i : |x| > t[i]}; the 3-bit pattern is kFp4PatternByRank[r].
inline constexpr std::array<uint32_t, 7> kFp4ThresholdBits = {
    0x3B2AAAB9, 0x3DB00000, 0x3E555555, 0x3E955555, 0x3ED55556, 0x3F155550, 0x3F555555};
inline constexpr std::array<uint8_t, 8> kFp4PatternByRank = {0b000, 0b001, 0b110, 0b111,
                                                             0b100, 0b101, 0b010, 0b011};

// create_dynamic_map(signed=True) as measured by bitsandbytes on torch 2.11/x86 (bnb-spec §3.1).
// Used when quantizing; when loading, the map stored in the checkpoint is used instead.
extern const std::array<uint32_t, 256> kDynamicMapBits;

// Float views of the tables above (built once from the bit patterns).
const std::array<float, 16>& Nf4Code();
const std::array<float, 16>& Fp4Code();
const std::array<float, 256>& DynamicMap();

}  // namespace kbitd::quant
