// GGML tensor types as stored in GGUF files: block layouts and reference dequantization.
// Layouts follow ggml (ggml-common.h in llama.cpp); every block struct has its size checked.
#pragma once

#include <cstddef>
#include <cstdint>

namespace g3e {

// Numbering fixed by the GGUF format (ggml_type).
enum class GGMLType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

struct GGMLTypeInfo {
  const char* name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
  bool can_dequantize; // a reference dequantization exists in this runtime
};

// Returns nullptr for a type id this runtime does not know. Covers the project's own types
// (ids 1024 and up, g3e_types.h) too, as does dequantize_row.
const GGMLTypeInfo* ggml_type_info(uint32_t type);

// Bytes taken by n elements of `type`; n must be a multiple of the block size.
int64_t ggml_row_bytes(GGMLType type, int64_t n);

// Dequantizes n elements (a multiple of the block size) from src into dst.
// Reference (scalar) code; the numerics match ggml's dequantize_row_* functions exactly.
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n);

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);

}  // namespace g3e
