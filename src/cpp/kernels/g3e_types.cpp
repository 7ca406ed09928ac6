// Scalar dequantization of the project's tensor types. Each value is one float32 product of
// the f16 block scale and the decoded code, as in quantize/formats.py, so both give the same
// bits.

#include "kernels/g3e_types.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace g3e {

namespace {

struct G3ETable {
  GGMLTypeInfo info[3];
  float sfp8[128];
  G3ETable()
      : info{{"g3e_i8_row", kG3EBlock, sizeof(BlockG3EI8), true},
             {"g3e_i4_row", kG3EBlock, sizeof(BlockG3EI4), true},
             {"g3e_sfp8", kG3EBlock, sizeof(BlockG3ESFP8), true}} {
    for (int code = 0; code < 128; ++code) {
      if (code & 0x40) {
        const int exponent = (code >> 3) & 7;
        const int mantissa = code & 7;
        sfp8[code] = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
      } else if (code != 0) {
        const int exponent = (code >> 2) & 15;
        const int mantissa = code & 3;
        sfp8[code] = std::ldexp(1.0f + static_cast<float>(mantissa) / 4.0f, exponent - 23);
      } else {
        sfp8[code] = 0.0f;
      }
    }
  }
};

const G3ETable& table() {
  static const G3ETable t;
  return t;
}

}  // namespace

const GGMLTypeInfo* g3e_type_info(uint32_t type) {
  if (type < static_cast<uint32_t>(G3EType::I8_ROW) || type > static_cast<uint32_t>(G3EType::SFP8)) {
    return nullptr;
  }
  return &table().info[type - static_cast<uint32_t>(G3EType::I8_ROW)];
}

float sfp8_to_fp32(uint8_t code) {
  const float magnitude = table().sfp8[code & 0x7F];
  return (code & 0x80) ? -magnitude : magnitude;
}

bool g3e_dequantize_row(uint32_t type, const void* src, float* dst, int64_t n) {
  if (g3e_type_info(type) == nullptr) return false;
  if (n % kG3EBlock != 0) {
    throw std::invalid_argument("row of " + std::to_string(n) + " elements is not a multiple of the " +
                                g3e_type_info(type)->name + " block size " + std::to_string(kG3EBlock));
  }
  const int64_t nb = n / kG3EBlock;
  switch (static_cast<G3EType>(type)) {
    case G3EType::I8_ROW: {
      const auto* x = static_cast<const BlockG3EI8*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < kG3EBlock; ++j) dst[i * kG3EBlock + j] = d * static_cast<float>(x[i].qs[j]);
      }
      return true;
    }
    case G3EType::I4_ROW: {
      const auto* x = static_cast<const BlockG3EI4*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < kG3EBlock / 2; ++j) {
          dst[i * kG3EBlock + 2 * j] = d * static_cast<float>((x[i].qs[j] & 0x0F) - 8);
          dst[i * kG3EBlock + 2 * j + 1] = d * static_cast<float>((x[i].qs[j] >> 4) - 8);
        }
      }
      return true;
    }
    case G3EType::SFP8: {
      const auto* x = static_cast<const BlockG3ESFP8*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < kG3EBlock; ++j) dst[i * kG3EBlock + j] = d * sfp8_to_fp32(x[i].qs[j]);
      }
      return true;
    }
  }
  return false;
}

}  // namespace g3e
