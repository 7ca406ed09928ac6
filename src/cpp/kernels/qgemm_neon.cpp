// NEON + dotprod (ARMv8.2 SDOT) kernels for the qblock layout. Same results as
// qgemm_scalar.cpp. Built only for aarch64; selected at run time when HWCAP_ASIMDDP is set.
//
// A 16-row tile is four 128-bit quarters (4 rows x 4 k each). SDOT is signed x signed, so the
// weights go in as int8: u <= 63 as is, 8-bit u as u - 128 (with the zero point moved by 128).
// NOTE: i8mm (SMMLA/USMMLA) would suit the GEMM better; this file uses SDOT only.
#if defined(__aarch64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/qformat.h"
#include "kernels/qgemm_driver.h"

namespace g3e::qk {

namespace {

// 0xFF in byte i where bit i of `bits` is set.
inline uint8x16_t expand_bits(uint32_t bits) {
  static const uint8_t kSel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t v = vcombine_u8(vdup_n_u8(static_cast<uint8_t>(bits & 0xFF)),
                                   vdup_n_u8(static_cast<uint8_t>((bits >> 8) & 0xFF)));
  return vtstq_u8(v, vld1q_u8(kSel));
}

struct Neon {
  static constexpr int kGemvNT = 2;
  static constexpr int kGemmMR = 2;
  static constexpr int kGemmNT = 1;
  static constexpr int kPrefetchBytes = 8192;  // GEMV software prefetch distance

  // int8 vector of k-group g for rows 4c..4c+3 of one (tile, block).
  template <int BITS>
  static inline int8x16_t group(const uint8_t* q, int g, int c) {
    if constexpr (BITS == 8) {
      return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q + 64 * g + 16 * c), vdupq_n_u8(0x80)));
    } else {
      const uint8x16_t v = vld1q_u8(q + 64 * (g / 2) + 16 * c);
      uint8x16_t u = (g % 2 == 0) ? vandq_u8(v, vdupq_n_u8(0x0F)) : vshrq_n_u8(v, 4);
      if constexpr (BITS >= 5) {
        uint64_t word;
        std::memcpy(&word, q + 256 + 8 * g, 8);
        u = vaddq_u8(u, vandq_u8(expand_bits(static_cast<uint32_t>(word >> (16 * c))), vdupq_n_u8(16)));
      }
      if constexpr (BITS == 6) {
        uint64_t word;
        std::memcpy(&word, q + 320 + 8 * g, 8);
        u = vaddq_u8(u, vandq_u8(expand_bits(static_cast<uint32_t>(word >> (16 * c))), vdupq_n_u8(32)));
      }
      return vreinterpretq_s8_u8(u);
    }
  }

  // Adds the k-groups [g0, g0 + count) of one (tile, block) into iacc, for MR rows x NQ
  // quarters. A loop rather than full unrolling, so broadcasts are not all hoisted and spilled.
  template <int BITS, int MR, int NQ>
  static inline void dot_groups(const uint8_t* const* q, const int8_t* const* xq, int g0, int count,
                                int32x4_t (&iacc)[MR][NQ]) {
#pragma GCC unroll 1
    for (int g = g0; g < g0 + count; ++g) {
      int8x16_t xv[MR];
      for (int r = 0; r < MR; ++r) {
        int32_t x4;
        std::memcpy(&x4, xq[r] + 4 * g, 4);
        xv[r] = vreinterpretq_s8_s32(vdupq_n_s32(x4));
      }
      for (int c = 0; c < NQ; ++c) {
        const int8x16_t wv = group<BITS>(q[c / 4], g, c % 4);
        for (int r = 0; r < MR; ++r) iacc[r][c] = vdotq_s32(iacc[r][c], wv, xv[r]);
      }
    }
  }

  template <int BITS, int SUB, int MR, int NT>
  static void micro(const QPanel& w, const QActs& a, int64_t t, int64_t i0, float* y, int64_t ldy) {
    constexpr int kNSub = kBlockK / SUB;
    constexpr int kGroupsPerSub = SUB / 4;
    constexpr int NQ = 4 * NT;  // 4-row quarters in flight
    constexpr int64_t kQuantBytes = BITS == 8 ? 512 : 256 + 64 * (BITS - 4);
    const QFormat& f = w.f;
    const int64_t n_kb = w.n_kb;
    const int64_t scale_bytes = f.scale_bytes(), min_bytes = f.min_bytes();
    const bool scale_f16 = f.scale_f16, has_min = f.has_min;
    // 8-bit weights are used as signed q = u - 128, so the zero point moves by 128.
    const int zp = BITS == 8 ? f.zp - 128 : f.zp;
    float32x4_t acc[MR][NQ];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NQ; ++c) acc[r][c] = vdupq_n_f32(0.0f);

    const uint8_t* q[NT];
    const uint8_t* sc[NT];
    const uint8_t* mn[NT];
    for (int tt = 0; tt < NT; ++tt) {
      q[tt] = w.tile(t + tt);
      sc[tt] = q[tt] + n_kb * kQuantBytes;
      mn[tt] = sc[tt] + n_kb * scale_bytes;
    }
    const int8_t* xq[MR];
    const float* xs[MR];
    const int32_t* bs[MR];
    for (int r = 0; r < MR; ++r) {
      xq[r] = a.xq + (i0 + r) * a.cols;
      xs[r] = a.xs + (i0 + r) * a.n_kb;
      bs[r] = a.bsum + (i0 + r) * a.n_kb * 2;
    }
    // GEMV: linear software prefetch along the contiguous tile records (see qgemm_avx512.cpp).
    const int64_t pf_lines = (NT * w.tile_stride / n_kb + 63) / 64 + 1;
    const char* const pf_base = reinterpret_cast<const char*>(w.tile(t)) + kPrefetchBytes;

    for (int64_t b = 0; b < n_kb; ++b) {
      if constexpr (MR == 1) {
        const char* pf = pf_base + b * NT * w.tile_stride / n_kb;
        for (int64_t l = 0; l < pf_lines; ++l) __builtin_prefetch(pf + 64 * l, 0, 3);
      }
      for (int s = 0; s < kNSub; ++s) {
        int32_t bsum[MR];
        int32x4_t iacc[MR][NQ];
        for (int r = 0; r < MR; ++r) {
          bsum[r] = SUB == 16 ? bs[r][2 * b + s] : bs[r][2 * b] + bs[r][2 * b + 1];
          const int32x4_t init = vdupq_n_s32(-zp * bsum[r]);
          for (int c = 0; c < NQ; ++c) iacc[r][c] = init;
        }
        dot_groups<BITS, MR, NQ>(q, xq, s * kGroupsPerSub, kGroupsPerSub, iacc);

        float32x4_t ws[NQ];
        for (int c = 0; c < NQ; ++c) {
          const uint8_t* p = sc[c / 4];
          ws[c] = scale_f16 ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p) + 16 * s + 4 * (c % 4))))
                            : vld1q_f32(reinterpret_cast<const float*>(p) + 16 * s + 4 * (c % 4));
        }
        for (int r = 0; r < MR; ++r) {
          const float32x4_t vxs = vdupq_n_f32(xs[r][b]);
          for (int c = 0; c < NQ; ++c) {
            acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(iacc[r][c]), vmulq_f32(ws[c], vxs));
          }
        }
        if (has_min) {
          for (int r = 0; r < MR; ++r) {
            const float32x4_t xsum = vdupq_n_f32(xs[r][b] * static_cast<float>(bsum[r]));
            for (int c = 0; c < NQ; ++c) {
              const float* mp = reinterpret_cast<const float*>(mn[c / 4]) + 16 * s + 4 * (c % 4);
              acc[r][c] = vfmaq_f32(acc[r][c], vld1q_f32(mp), xsum);
            }
          }
        }
      }
      for (int tt = 0; tt < NT; ++tt) {
        q[tt] += kQuantBytes;
        sc[tt] += scale_bytes;
        mn[tt] += min_bytes;
      }
      for (int r = 0; r < MR; ++r) xq[r] += kBlockK;
    }

    for (int c = 0; c < NQ; ++c) {
      const int64_t n0 = (t + c / 4) * kTileRows + 4 * (c % 4);
      const int64_t valid = std::min<int64_t>(4, w.rows - n0);
      if (valid <= 0) continue;
      for (int r = 0; r < MR; ++r) {
        float* dst = y + (i0 + r) * ldy + n0;
        if (valid == 4) {
          vst1q_f32(dst, acc[r][c]);
        } else {
          float tmp[4];
          vst1q_f32(tmp, acc[r][c]);
          for (int64_t l = 0; l < valid; ++l) dst[l] = tmp[l];
        }
      }
    }
  }
};

}  // namespace

void qgemm_neon(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  if (!drive_qgemm<Neon>(w, a, t0, t1, y, ldy)) qgemm_scalar(w, a, t0, t1, y, ldy);
}

void quantize_acts_neon(const float* x, const QActs& a, int64_t r0, int64_t r1) {
  int8_t* xq_all = const_cast<int8_t*>(a.xq);
  float* xs_all = const_cast<float*>(a.xs);
  int32_t* bsum_all = const_cast<int32_t*>(a.bsum);
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t b = 0; b < a.n_kb; ++b) {
      const float* xb = x + i * a.cols + b * kBlockK;
      int8_t* q = xq_all + i * a.cols + b * kBlockK;
      float32x4_t v[8];
      for (int j = 0; j < 8; ++j) v[j] = vld1q_f32(xb + 4 * j);
      // |x| < inf is false for infinities and NaN. Such a block is stored as
      // quantize_acts_scalar() stores it.
      const float32x4_t inf = vdupq_n_f32(std::numeric_limits<float>::infinity());
      uint32x4_t finite = vcltq_f32(vabsq_f32(v[0]), inf);
      for (int j = 1; j < 8; ++j) finite = vandq_u32(finite, vcltq_f32(vabsq_f32(v[j]), inf));
      if (vminvq_u32(finite) == 0) {
        std::memset(q, 0, kBlockK);
        xs_all[i * a.n_kb + b] = std::numeric_limits<float>::quiet_NaN();
        bsum_all[(i * a.n_kb + b) * 2 + 0] = 0;
        bsum_all[(i * a.n_kb + b) * 2 + 1] = 0;
        continue;
      }
      float32x4_t mx = vabsq_f32(v[0]);
      for (int j = 1; j < 8; ++j) mx = vmaxq_f32(mx, vabsq_f32(v[j]));
      const float amax = vmaxvq_f32(mx);
      const float d = amax / 127.0f;
      // 1 / d is infinite for d == 0 and for d below about 2.9e-39 (see quantize_acts_scalar).
      const float id = d != 0.0f && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;
      int32x4_t qi[8];
      // vcvtnq rounds to nearest, ties to even, like nearbyint in the reference.
      for (int j = 0; j < 8; ++j) qi[j] = vcvtnq_s32_f32(vmulq_n_f32(v[j], id));
      for (int j = 0; j < 8; j += 2) {
        const int16x8_t h = vcombine_s16(vqmovn_s32(qi[j]), vqmovn_s32(qi[j + 1]));
        vst1_s8(q + 4 * j, vqmovn_s16(h));
      }
      xs_all[i * a.n_kb + b] = d;
      bsum_all[(i * a.n_kb + b) * 2 + 0] = vaddvq_s32(vaddq_s32(vaddq_s32(qi[0], qi[1]), vaddq_s32(qi[2], qi[3])));
      bsum_all[(i * a.n_kb + b) * 2 + 1] = vaddvq_s32(vaddq_s32(vaddq_s32(qi[4], qi[5]), vaddq_s32(qi[6], qi[7])));
    }
  }
}

}  // namespace g3e::qk

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif  // __aarch64__
