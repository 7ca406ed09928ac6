// Block structs of the GGUF quantization types, byte for byte as ggml lays them out
// (ggml-common.h). Internal to the kernels: the model uses only GGMLType and PackedWeight.
#pragma once

#include <cstdint>

namespace g3e {

constexpr int kQK4_0 = 32;  // elements per block of the "legacy" formats
constexpr int kQK8_0 = 32;
constexpr int kQK_K = 256;  // elements per super-block of the k-quants
constexpr int kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K

// Q4_0: 4.5 bits per weight. x = d * (q - 8) with q in [0, 15]. Element j is the low nibble of
// qs[j], element j + 16 the high nibble.
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "q4_0 block");

// Q4_1: 5 bits per weight. x = d * q + m.
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 min
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_1) == 20, "q4_1 block");

// Q5_0: 5.5 bits per weight. x = d * (q - 16), q = nibble | (bit j of qh) << 4.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];  // 32 high bits, little-endian uint32
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22, "q5_0 block");

// Q5_1: 6 bits per weight. x = d * q + m.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24, "q5_1 block");

// Q8_0: 8.5 bits per weight. x = d * q.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "q8_0 block");

// Q2_K: 2.625 bits per weight. 16 sub-blocks of 16, scales[i] = scale (low 4 bits) | min << 4.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};
static_assert(sizeof(BlockQ2_K) == 84, "q2_K block");

// Q3_K: 3.4375 bits per weight. 16 sub-blocks of 16 with signed 6-bit scales (offset 32).
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "q3_K block");

// Q4_K: 4.5 bits per weight. 8 sub-blocks of 32, x = d*sc[j] * q - dmin*m[j].
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144, "q4_K block");

// Q5_K: 5.5 bits per weight. As Q4_K with a fifth bit per weight in qh.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176, "q5_K block");

// Q6_K: 6.5625 bits per weight. 16 sub-blocks of 16 with int8 scales, x = d*sc * (q - 32).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "q6_K block");

// Q8_K: 9.125 bits per weight. ggml's activation format for k-quant dot products.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "q8_K block");

// Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

// Unpacks the 16 signed 6-bit scales of a Q3_K block (stored with an offset of 32).
inline void q3_K_scales(const uint8_t* packed, int8_t* out) {
  for (int j = 0; j < 16; ++j) {
    const int low = (packed[j % 8] >> (4 * (j / 8))) & 0x0F;
    const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 0x03;
    out[j] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
}

}  // namespace g3e
