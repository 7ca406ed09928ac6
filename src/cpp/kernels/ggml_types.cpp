// Type table and scalar reference dequantization of the GGUF tensor types.
// Every formula below evaluates in the same order as ggml's dequantize_row_* (and gguf-py's
// numpy port), so the results are bit-identical. A fused multiply-add would change the last bit
// of the "d * q + m" forms, which is why contraction is switched off for this file.
#include "fp_contract_off.h"

#include "kernels/ggml_types.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/g3e_types.h"
#include "kernels/quant_blocks.h"

namespace g3e {

namespace {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float h2f(uint16_t h) { return fp16_to_fp32(h); }

// Type infos indexed by type id. An entry with a null name is an unknown id.
struct TypeTable {
  GGMLTypeInfo info[31] = {};
  TypeTable() {
    auto set = [&](GGMLType t, const char* name, int64_t bs, int64_t ts, bool deq) {
      info[static_cast<uint32_t>(t)] = GGMLTypeInfo{name, bs, ts, deq};
    };
    set(GGMLType::F32, "f32", 1, 4, true);
    set(GGMLType::F16, "f16", 1, 2, true);
    set(GGMLType::BF16, "bf16", 1, 2, true);
    set(GGMLType::Q4_0, "q4_0", kQK4_0, sizeof(BlockQ4_0), true);
    set(GGMLType::Q4_1, "q4_1", kQK4_0, sizeof(BlockQ4_1), true);
    set(GGMLType::Q5_0, "q5_0", kQK4_0, sizeof(BlockQ5_0), true);
    set(GGMLType::Q5_1, "q5_1", kQK4_0, sizeof(BlockQ5_1), true);
    set(GGMLType::Q8_0, "q8_0", kQK8_0, sizeof(BlockQ8_0), true);
    set(GGMLType::Q8_1, "q8_1", kQK8_0, 36, false);  // activation-only format in ggml
    set(GGMLType::Q2_K, "q2_K", kQK_K, sizeof(BlockQ2_K), true);
    set(GGMLType::Q3_K, "q3_K", kQK_K, sizeof(BlockQ3_K), true);
    set(GGMLType::Q4_K, "q4_K", kQK_K, sizeof(BlockQ4_K), true);
    set(GGMLType::Q5_K, "q5_K", kQK_K, sizeof(BlockQ5_K), true);
    set(GGMLType::Q6_K, "q6_K", kQK_K, sizeof(BlockQ6_K), true);
    set(GGMLType::Q8_K, "q8_K", kQK_K, sizeof(BlockQ8_K), true);
  }
};

const TypeTable& table() {
  static const TypeTable t;
  return t;
}

void deq_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8;
      const int x1 = (x[i].qs[j] >> 4) - 8;
      y[i * kQK4_0 + j] = d * static_cast<float>(x0);
      y[i * kQK4_0 + j + kQK4_0 / 2] = d * static_cast<float>(x1);
    }
  }
}

void deq_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int x0 = x[i].qs[j] & 0x0F;
      const int x1 = x[i].qs[j] >> 4;
      y[i * kQK4_0 + j] = d * static_cast<float>(x0) + m;
      y[i * kQK4_0 + j + kQK4_0 / 2] = d * static_cast<float>(x1) + m;
    }
  }
}

void deq_q5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
      const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
      const int x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16;
      const int x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
      y[i * kQK4_0 + j] = d * static_cast<float>(x0);
      y[i * kQK4_0 + j + kQK4_0 / 2] = d * static_cast<float>(x1);
    }
  }
}

void deq_q5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
      const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
      const int x0 = (x[i].qs[j] & 0x0F) | xh0;
      const int x1 = (x[i].qs[j] >> 4) | xh1;
      y[i * kQK4_0 + j] = d * static_cast<float>(x0) + m;
      y[i * kQK4_0 + j + kQK4_0 / 2] = d * static_cast<float>(x1) + m;
    }
  }
}

void deq_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < kQK8_0; ++j) y[i * kQK8_0 + j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void deq_q2_K(const BlockQ2_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* q = x[i].qs;
    int is = 0;
    for (int n = 0; n < kQK_K; n += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = x[i].scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF);
          const float ml = dmin * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l) {
            *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
          }
        }
      }
      q += 32;
    }
  }
}

void deq_q3_K(const BlockQ3_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d_all = h2f(x[i].d);
    int8_t scales[16];
    q3_K_scales(x[i].scales, scales);
    const uint8_t* q = x[i].qs;
    const uint8_t* hm = x[i].hmask;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < kQK_K; n += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * static_cast<float>(scales[is++]);
          for (int l = 0; l < 16; ++l) {
            const int ql = (q[l + 16 * half] >> shift) & 3;
            const int qv = ql - ((hm[l + 16 * half] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(qv);
          }
        }
        m <<= 1;
      }
      q += 32;
    }
  }
}

void deq_q4_K(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK_K / 64; ++j) {
      uint8_t sc, m;
      get_scale_min_k4(2 * j, x[i].scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      get_scale_min_k4(2 * j + 1, x[i].scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
      q += 32;
    }
  }
}

void deq_q5_K(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const float dmin = h2f(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < kQK_K / 64; ++j) {
      uint8_t sc, m;
      get_scale_min_k4(2 * j, x[i].scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      get_scale_min_k4(2 * j + 1, x[i].scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      }
      ql += 32;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
}

void deq_q6_K(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int n = 0; n < kQK_K; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = (d * static_cast<float>(sc[is + 0])) * static_cast<float>(q1);
        y[l + 32] = (d * static_cast<float>(sc[is + 2])) * static_cast<float>(q2);
        y[l + 64] = (d * static_cast<float>(sc[is + 4])) * static_cast<float>(q3);
        y[l + 96] = (d * static_cast<float>(sc[is + 6])) * static_cast<float>(q4);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

void deq_q8_K(const BlockQ8_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    for (int j = 0; j < kQK_K; ++j) y[i * kQK_K + j] = x[i].d * static_cast<float>(x[i].qs[j]);
  }
}

}  // namespace

const GGMLTypeInfo* ggml_type_info(uint32_t type) {
  if (const GGMLTypeInfo* info = g3e_type_info(type)) return info;
  const TypeTable& t = table();
  if (type >= sizeof(t.info) / sizeof(t.info[0]) || t.info[type].name == nullptr) return nullptr;
  return &t.info[type];
}

int64_t ggml_row_bytes(GGMLType type, int64_t n) {
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(type));
  if (info == nullptr) {
    throw std::invalid_argument("unknown ggml type id " + std::to_string(static_cast<uint32_t>(type)));
  }
  if (n % info->block_size != 0) {
    throw std::invalid_argument(std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
                                info->name + " block size " + std::to_string(info->block_size));
  }
  return n / info->block_size * info->type_size;
}

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  if (g3e_dequantize_row(static_cast<uint32_t>(type), src, dst, n)) return;
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(type));
  if (info == nullptr || !info->can_dequantize) {
    throw std::invalid_argument("no dequantization for ggml type id " +
                                std::to_string(static_cast<uint32_t>(type)));
  }
  const int64_t nb = ggml_row_bytes(type, n) / info->type_size;
  switch (type) {
    case GGMLType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case GGMLType::F16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
      return;
    }
    case GGMLType::BF16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(h[i]);
      return;
    }
    case GGMLType::Q4_0: return deq_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case GGMLType::Q4_1: return deq_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case GGMLType::Q5_0: return deq_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case GGMLType::Q5_1: return deq_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case GGMLType::Q8_0: return deq_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
    case GGMLType::Q2_K: return deq_q2_K(static_cast<const BlockQ2_K*>(src), dst, nb);
    case GGMLType::Q3_K: return deq_q3_K(static_cast<const BlockQ3_K*>(src), dst, nb);
    case GGMLType::Q4_K: return deq_q4_K(static_cast<const BlockQ4_K*>(src), dst, nb);
    case GGMLType::Q5_K: return deq_q5_K(static_cast<const BlockQ5_K*>(src), dst, nb);
    case GGMLType::Q6_K: return deq_q6_K(static_cast<const BlockQ6_K*>(src), dst, nb);
    case GGMLType::Q8_K: return deq_q8_K(static_cast<const BlockQ8_K*>(src), dst, nb);
    default:
      break;
  }
  throw std::invalid_argument(std::string("no dequantization for ") + info->name);
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (mant << 13));  // inf / nan
  return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t fp32_to_fp16(float f) {
  // Round to nearest, ties to even, as the F16C instruction and numpy do.
  const uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return sign | (a > 0x7F800000u ? 0x7E00 : 0x7C00);  // nan / inf
  if (a >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below 2^-14: a subnormal (or zero) in half precision, in units of 2^-24. The scaling is
    // exact, nearbyint rounds half to even in the default rounding mode, and 1024 encodes
    // the smallest normal, so the carry needs no special case.
    const float units = std::nearbyint(f32_from_bits(a) * 16777216.0f);
    return sign | static_cast<uint16_t>(units);
  }
  const uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded >> 13) - (112u << 10));
}

float bf16_to_fp32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

}  // namespace g3e
