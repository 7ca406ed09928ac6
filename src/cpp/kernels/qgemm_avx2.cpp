// AVX2 (+FMA, F16C) kernels for the qblock layout. Same results as qgemm_scalar.cpp.
//
// A 16-row tile is two 256-bit halves (rows 0-7, 8-15). Without VNNI the u8 x s8 products go
// through vpmaddubsw (pairs into int16) and vpmaddwd (into int32). vpmaddubsw saturates at
// 32767, so 8-bit weights use the sign trick: |q| times x carrying q's sign (at most
// 2 * 128 * 127); 4-6 bit weights (u <= 63) stay unsigned and two k-groups share one vpmaddwd.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/qformat.h"
#include "kernels/qgemm_driver.h"

namespace g3e::qk {

namespace {

inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// 0xFF in byte i where bit i of `bits` is set.
inline __m256i expand_bits(uint32_t bits) {
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                        3, 3, 3, 3, 3, 3);
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuf), sel);
  return _mm256_cmpeq_epi8(v, sel);
}

struct Avx2 {
  static constexpr int kGemvNT = 2;
  static constexpr int kGemmMR = 2;
  static constexpr int kGemmNT = 1;
  static constexpr int kPrefetchBytes = 8192;  // GEMV software prefetch distance

  // u8 vector of k-group g for rows 8h..8h+7 of one (tile, block).
  template <int BITS>
  static inline __m256i group(const uint8_t* q, int g, int h) {
    if constexpr (BITS == 8) {
      return _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * g + 32 * h));
    } else {
      const __m256i nib = _mm256_set1_epi8(0x0F);
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * (g / 2) + 32 * h));
      __m256i u = (g % 2 == 0) ? _mm256_and_si256(v, nib) : _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
      if constexpr (BITS >= 5) {
        uint32_t bits;
        std::memcpy(&bits, q + 256 + 8 * g + 4 * h, 4);
        u = _mm256_add_epi8(u, _mm256_and_si256(expand_bits(bits), _mm256_set1_epi8(16)));
      }
      if constexpr (BITS == 6) {
        uint32_t bits;
        std::memcpy(&bits, q + 320 + 8 * g + 4 * h, 4);
        u = _mm256_add_epi8(u, _mm256_and_si256(expand_bits(bits), _mm256_set1_epi8(32)));
      }
      return u;
    }
  }

  // Adds the k-groups [g0, g0 + count) of one (tile, block) into iacc, for MR rows x NH halves,
  // two groups per step. A loop rather than full unrolling, so broadcasts are not all hoisted.
  template <int BITS, int MR, int NH>
  static inline void dot_groups(const uint8_t* const* q, const int8_t* const* xq, int g0, int count,
                                __m256i (&iacc)[MR][NH]) {
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 1
    for (int g = g0; g < g0 + count; g += 2) {
      __m256i xv0[MR], xv1[MR];
      for (int r = 0; r < MR; ++r) {
        int32_t x0, x1;
        std::memcpy(&x0, xq[r] + 4 * g, 4);
        std::memcpy(&x1, xq[r] + 4 * g + 4, 4);
        xv0[r] = _mm256_set1_epi32(x0);
        xv1[r] = _mm256_set1_epi32(x1);
      }
      for (int h = 0; h < NH; ++h) {
        const __m256i w0 = group<BITS>(q[h / 2], g, h % 2);
        const __m256i w1 = group<BITS>(q[h / 2], g + 1, h % 2);
        if constexpr (BITS == 8) {
          const __m256i s0 = _mm256_xor_si256(w0, _mm256_set1_epi8(static_cast<char>(0x80)));
          const __m256i s1 = _mm256_xor_si256(w1, _mm256_set1_epi8(static_cast<char>(0x80)));
          const __m256i a0 = _mm256_abs_epi8(s0), a1 = _mm256_abs_epi8(s1);
          for (int r = 0; r < MR; ++r) {
            const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xv0[r], s0));
            const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xv1[r], s1));
            iacc[r][h] = _mm256_add_epi32(iacc[r][h], _mm256_madd_epi16(p0, ones));
            iacc[r][h] = _mm256_add_epi32(iacc[r][h], _mm256_madd_epi16(p1, ones));
          }
        } else {
          for (int r = 0; r < MR; ++r) {
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, xv0[r]), _mm256_maddubs_epi16(w1, xv1[r]));
            iacc[r][h] = _mm256_add_epi32(iacc[r][h], _mm256_madd_epi16(p, ones));
          }
        }
      }
    }
  }

  template <int BITS, int SUB, int MR, int NT>
  static void micro(const QPanel& w, const QActs& a, int64_t t, int64_t i0, float* y, int64_t ldy) {
    constexpr int kNSub = kBlockK / SUB;
    constexpr int kGroupsPerSub = SUB / 4;
    constexpr int NH = 2 * NT;  // 8-row halves in flight
    constexpr int64_t kQuantBytes = BITS == 8 ? 512 : 256 + 64 * (BITS - 4);
    const QFormat& f = w.f;
    const int64_t n_kb = w.n_kb;
    const int64_t scale_bytes = f.scale_bytes(), min_bytes = f.min_bytes();
    const bool scale_f16 = f.scale_f16, has_min = f.has_min;
    // 8-bit weights are used as signed q = u - 128, so the zero point moves by 128.
    const int zp = BITS == 8 ? f.zp - 128 : f.zp;
    __m256 acc[MR][NH];
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_setzero_ps();

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
        for (int64_t l = 0; l < pf_lines; ++l) _mm_prefetch(pf + 64 * l, _MM_HINT_T0);
      }
      for (int s = 0; s < kNSub; ++s) {
        int32_t bsum[MR];
        __m256i iacc[MR][NH];
        for (int r = 0; r < MR; ++r) {
          bsum[r] = SUB == 16 ? bs[r][2 * b + s] : bs[r][2 * b] + bs[r][2 * b + 1];
          const __m256i init = _mm256_set1_epi32(-zp * bsum[r]);
          for (int h = 0; h < NH; ++h) iacc[r][h] = init;
        }
        dot_groups<BITS, MR, NH>(q, xq, s * kGroupsPerSub, kGroupsPerSub, iacc);

        __m256 ws[NH];
        for (int h = 0; h < NH; ++h) {
          const uint8_t* p = sc[h / 2];
          ws[h] = scale_f16
                      ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p) + 2 * s + h % 2))
                      : _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 16 * s + 8 * (h % 2));
        }
        for (int r = 0; r < MR; ++r) {
          const __m256 vxs = _mm256_set1_ps(xs[r][b]);
          for (int h = 0; h < NH; ++h) {
            acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][h]), _mm256_mul_ps(ws[h], vxs), acc[r][h]);
          }
        }
        if (has_min) {
          for (int r = 0; r < MR; ++r) {
            const __m256 xsum = _mm256_set1_ps(xs[r][b] * static_cast<float>(bsum[r]));
            for (int h = 0; h < NH; ++h) {
              const float* mp = reinterpret_cast<const float*>(mn[h / 2]) + 16 * s + 8 * (h % 2);
              acc[r][h] = _mm256_fmadd_ps(_mm256_loadu_ps(mp), xsum, acc[r][h]);
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

    for (int h = 0; h < NH; ++h) {
      const int64_t n0 = (t + h / 2) * kTileRows + 8 * (h % 2);
      const int64_t valid = std::min<int64_t>(8, w.rows - n0);
      if (valid <= 0) continue;
      if (valid == 8) {
        for (int r = 0; r < MR; ++r) _mm256_storeu_ps(y + (i0 + r) * ldy + n0, acc[r][h]);
      } else {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
        for (int r = 0; r < MR; ++r) _mm256_maskstore_ps(y + (i0 + r) * ldy + n0, mask, acc[r][h]);
      }
    }
  }
};

}  // namespace

void qgemm_avx2(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  if (!drive_qgemm<Avx2>(w, a, t0, t1, y, ldy)) qgemm_scalar(w, a, t0, t1, y, ldy);
}

void quantize_acts_avx2(const float* x, const QActs& a, int64_t r0, int64_t r1) {
  int8_t* xq_all = const_cast<int8_t*>(a.xq);
  float* xs_all = const_cast<float*>(a.xs);
  int32_t* bsum_all = const_cast<int32_t*>(a.bsum);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t b = 0; b < a.n_kb; ++b) {
      const float* xb = x + i * a.cols + b * kBlockK;
      __m256 v[4];
      __m256 abs[4];
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(xb + 8 * j);
        abs[j] = _mm256_andnot_ps(sign, v[j]);
      }
      // The unordered "not less than" comparison is true for infinities and NaN. Such a block
      // is stored as quantize_acts_scalar() stores it.
      const __m256 nonfinite =
          _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(abs[0], inf, _CMP_NLT_UQ), _mm256_cmp_ps(abs[1], inf, _CMP_NLT_UQ)),
                       _mm256_or_ps(_mm256_cmp_ps(abs[2], inf, _CMP_NLT_UQ), _mm256_cmp_ps(abs[3], inf, _CMP_NLT_UQ)));
      if (_mm256_movemask_ps(nonfinite) != 0) {
        std::memset(xq_all + i * a.cols + b * kBlockK, 0, kBlockK);
        xs_all[i * a.n_kb + b] = std::numeric_limits<float>::quiet_NaN();
        bsum_all[(i * a.n_kb + b) * 2 + 0] = 0;
        bsum_all[(i * a.n_kb + b) * 2 + 1] = 0;
        continue;
      }
      __m256 mx = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f;
      // 1 / d is infinite for d == 0 and for d below about 2.9e-39 (see quantize_acts_scalar).
      const float id = d != 0.0f && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
      // cvtps_epi32 rounds half to even under the default MXCSR, like nearbyint in the reference.
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
      const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
      const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
      __m256i p = _mm256_packs_epi16(p01, p23);
      p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq_all + i * a.cols + b * kBlockK), p);
      xs_all[i * a.n_kb + b] = d;
      bsum_all[(i * a.n_kb + b) * 2 + 0] = hsum_epi32(_mm256_add_epi32(q[0], q[1]));
      bsum_all[(i * a.n_kb + b) * 2 + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3]));
    }
  }
}

}  // namespace g3e::qk
