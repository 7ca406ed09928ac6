// The project's own tensor types (ids 1024 and up, which ggml leaves free): per-channel int8
// and int4, and SFP8. docs/formats.md documents their layouts; the converter in quantize/
// writes them. ggml_type_info and dequantize_row (ggml_types.cpp) look them up here; qpack.cpp
// repacks the int8 and int4 types without loss for the integer kernels, and SFP8 is dequantized
// to float32 at load.
#pragma once

#include <cstdint>

#include "kernels/ggml_types.h"

namespace g3e {

enum class G3EType : uint32_t {
  I8_ROW = 1024,  // int8 codes, one f16 scale per block; the converter stores one scale per row
  I4_ROW = 1025,  // int4 codes in [-8, 7], same scale layout
  SFP8 = 1026,    // 8-bit switched floating point codes times an f16 block scale
};

constexpr int kG3EBlock = 128;  // elements per block; divides every Gemma 3 row width

#pragma pack(push, 1)
struct BlockG3EI8 {
  uint16_t d;                // f16 scale
  int8_t qs[kG3EBlock];      // value = d * qs[i]
};
struct BlockG3EI4 {
  uint16_t d;                  // f16 scale
  uint8_t qs[kG3EBlock / 2];   // element 2j in the low nibble of qs[j], 2j+1 in the high one;
                               // value = d * (nibble - 8)
};
struct BlockG3ESFP8 {
  uint16_t d;                // f16 scale
  uint8_t qs[kG3EBlock];     // value = d * sfp8_to_fp32(qs[i])
};
#pragma pack(pop)
static_assert(sizeof(BlockG3EI8) == 2 + kG3EBlock, "G3E_I8_ROW block is 130 bytes");
static_assert(sizeof(BlockG3EI4) == 2 + kG3EBlock / 2, "G3E_I4_ROW block is 66 bytes");
static_assert(sizeof(BlockG3ESFP8) == 2 + kG3EBlock, "G3E_SFP8 block is 130 bytes");

// Type info of a project type, nullptr for any other id.
const GGMLTypeInfo* g3e_type_info(uint32_t type);

// Dequantizes n elements (a multiple of 128) of a project type; returns false, writing
// nothing, when type is not a project type.
bool g3e_dequantize_row(uint32_t type, const void* src, float* dst, int64_t n);

// SFP8 code -> value. Bit 7 is the sign. With bit 6 set, bits 5-3 are the exponent e and bits
// 2-0 the mantissa m: 2^(e-7) * (1 + m/8), covering [2^-7, 1.875]. With bit 6 clear, bits 5-2
// are e and bits 1-0 m: 2^(e-23) * (1 + m/4), covering [2^-23, 2^-7). Code 0 (and 0x80) is 0.
float sfp8_to_fp32(uint8_t code);

}  // namespace g3e
