// AVX-512 (F/BW/VL/VNNI) kernels for the qblock layout. Same results as qgemm_scalar.cpp.
//
// One 64-byte weight vector holds 4 consecutive k of 16 rows; vpdpbusd multiplies it (u8)
// with a broadcast group of 4 int8 activations and adds 16 row sums in int32. A register tile
// is MR activation rows x NT weight tiles (16 rows each): GEMV (m <= 3) streams the weights once
// with NT = 4 (or 2) tiles in flight, GEMM uses 4 x 2 tiles over L2-sized chunks of tiles.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/qformat.h"
#include "kernels/qgemm_driver.h"

namespace g3e::qk {

namespace {

struct Avx512 {
  static constexpr int kGemvNT = 1;  // tiles in flight for m == 1
  static constexpr int kGemmMR = 4;  // activation rows of the GEMM register tile
  static constexpr int kGemmNT = 2;  // weight tiles of the GEMM register tile
  static constexpr int kPrefetchBytes = 8192;  // GEMV software prefetch distance (measured 4-16 KB best)

  // u8 vector of k-group g (4 k x 16 rows) of one (tile, block).
  template <int BITS>
  static inline __m512i group(const uint8_t* q, int g) {
    if constexpr (BITS == 8) {
      return _mm512_load_si512(q + 64 * g);
    } else {
      const __m512i nib = _mm512_set1_epi8(0x0F);
      const __m512i v = _mm512_load_si512(q + 64 * (g / 2));
      __m512i u = (g % 2 == 0) ? _mm512_and_si512(v, nib) : _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      if constexpr (BITS >= 5) {
        uint64_t bits;
        std::memcpy(&bits, q + 256 + 8 * g, 8);
        u = _mm512_mask_add_epi8(u, _cvtu64_mask64(bits), u, _mm512_set1_epi8(16));
      }
      if constexpr (BITS == 6) {
        uint64_t bits;
        std::memcpy(&bits, q + 320 + 8 * g, 8);
        u = _mm512_mask_add_epi8(u, _cvtu64_mask64(bits), u, _mm512_set1_epi8(32));
      }
      return u;
    }
  }

  // Adds the k-groups [g0, g0 + count) of one (tile, block) into iacc, for MR rows x NT tiles.
  // Kept as a loop over pairs of groups (one load of nibbles serves two groups) so that the
  // compiler does not hoist every broadcast of the block into registers and spill.
  template <int BITS, int MR, int NT>
  static inline void dot_groups(const uint8_t* const* q, const int8_t* const* xq, int g0, int count,
                                __m512i (&iacc)[MR][NT]) {
#pragma GCC unroll 1
    for (int g = g0; g < g0 + count; g += 2) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        for (int tt = 0; tt < NT; ++tt) {
          const __m512i wv = group<BITS>(q[tt], g + h);
          for (int r = 0; r < MR; ++r) {
            int32_t x4;
            std::memcpy(&x4, xq[r] + 4 * (g + h), 4);
            iacc[r][tt] = _mm512_dpbusd_epi32(iacc[r][tt], wv, _mm512_set1_epi32(x4));
          }
        }
      }
    }
  }

  // y[i0 + r, 16 * (t + tt) + lane] for r < MR, tt < NT.
  template <int BITS, int SUB, int MR, int NT>
  static void micro(const QPanel& w, const QActs& a, int64_t t, int64_t i0, float* y, int64_t ldy) {
    constexpr int kNSub = kBlockK / SUB;
    constexpr int kGroupsPerSub = SUB / 4;
    constexpr int64_t kQuantBytes = BITS == 8 ? 512 : 256 + 64 * (BITS - 4);
    const QFormat& f = w.f;
    const int64_t n_kb = w.n_kb;
    const int64_t scale_bytes = f.scale_bytes(), min_bytes = f.min_bytes();
    const bool scale_f16 = f.scale_f16, has_min = f.has_min;
    const int zp = f.zp;
    __m512 acc[MR][NT];
    for (int r = 0; r < MR; ++r)
      for (int tt = 0; tt < NT; ++tt) acc[r][tt] = _mm512_setzero_ps();

    // Per tile: quants, scales and mins of block b, advanced block by block.
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
    // GEMV streams from DRAM, and the hardware prefetcher alone leaves much of the bandwidth
    // unused. The tiles' records are contiguous, so prefetch along one linear stream position
    // (quants, scales and mins alike) a fixed distance ahead; lines per block step rounded up.
    const int64_t pf_lines = (NT * w.tile_stride / n_kb + 63) / 64 + 1;
    const char* const pf_base = reinterpret_cast<const char*>(w.tile(t)) + kPrefetchBytes;

    for (int64_t b = 0; b < n_kb; ++b) {
      if constexpr (MR == 1) {
        const char* pf = pf_base + b * NT * w.tile_stride / n_kb;
        for (int64_t l = 0; l < pf_lines; ++l) _mm_prefetch(pf + 64 * l, _MM_HINT_T0);
      }
#pragma GCC unroll 2
      for (int s = 0; s < kNSub; ++s) {
        int32_t bsum[MR];
        __m512i iacc[MR][NT];
        for (int r = 0; r < MR; ++r) {
          bsum[r] = SUB == 16 ? bs[r][2 * b + s] : bs[r][2 * b] + bs[r][2 * b + 1];
          const __m512i init = _mm512_set1_epi32(-zp * bsum[r]);
          for (int tt = 0; tt < NT; ++tt) iacc[r][tt] = init;
        }
        dot_groups<BITS, MR, NT>(q, xq, s * kGroupsPerSub, kGroupsPerSub, iacc);

        __m512 ws[NT];
        for (int tt = 0; tt < NT; ++tt) {
          ws[tt] = scale_f16 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc[tt]) + s))
                             : _mm512_loadu_ps(reinterpret_cast<const float*>(sc[tt]) + 16 * s);
        }
        for (int r = 0; r < MR; ++r) {
          const __m512 vxs = _mm512_set1_ps(xs[r][b]);
          for (int tt = 0; tt < NT; ++tt) {
            acc[r][tt] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[r][tt]), _mm512_mul_ps(ws[tt], vxs), acc[r][tt]);
          }
        }
        if (has_min) {
          for (int r = 0; r < MR; ++r) {
            const __m512 xsum = _mm512_set1_ps(xs[r][b] * static_cast<float>(bsum[r]));
            for (int tt = 0; tt < NT; ++tt) {
              acc[r][tt] = _mm512_fmadd_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(mn[tt]) + 16 * s), xsum,
                                           acc[r][tt]);
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

    for (int tt = 0; tt < NT; ++tt) {
      const int64_t n0 = (t + tt) * kTileRows;
      const int64_t valid = std::min<int64_t>(kTileRows, w.rows - n0);
      const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
      for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + (i0 + r) * ldy + n0, mask, acc[r][tt]);
    }
  }
};

}  // namespace

void qgemm_avx512(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  if (!drive_qgemm<Avx512>(w, a, t0, t1, y, ldy)) qgemm_scalar(w, a, t0, t1, y, ldy);
}

void quantize_acts_avx512(const float* x, const QActs& a, int64_t r0, int64_t r1) {
  int8_t* xq_all = const_cast<int8_t*>(a.xq);
  float* xs_all = const_cast<float*>(a.xs);
  int32_t* bsum_all = const_cast<int32_t*>(a.bsum);
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t b = 0; b < a.n_kb; ++b) {
      const float* xb = x + i * a.cols + b * kBlockK;
      int8_t* q = xq_all + i * a.cols + b * kBlockK;
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      const __m512 abs0 = _mm512_abs_ps(x0), abs1 = _mm512_abs_ps(x1);
      // The unordered "not less than" comparison is true for infinities and NaN. Such a block
      // is stored as quantize_acts_scalar() stores it.
      const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
      if ((_mm512_cmp_ps_mask(abs0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(abs1, inf, _CMP_NLT_UQ)) != 0) {
        std::memset(q, 0, kBlockK);
        xs_all[i * a.n_kb + b] = std::numeric_limits<float>::quiet_NaN();
        bsum_all[(i * a.n_kb + b) * 2 + 0] = 0;
        bsum_all[(i * a.n_kb + b) * 2 + 1] = 0;
        continue;
      }
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs0, abs1));
      const float d = amax / 127.0f;
      // 1 / d is infinite for d == 0 and for d below about 2.9e-39 (see quantize_acts_scalar).
      const float id = d != 0.0f && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;
      const __m512 vid = _mm512_set1_ps(id);
      // cvtps_epi32 rounds half to even under the default MXCSR, like nearbyint in the reference.
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(q1));
      xs_all[i * a.n_kb + b] = d;
      bsum_all[(i * a.n_kb + b) * 2 + 0] = _mm512_reduce_add_epi32(q0);
      bsum_all[(i * a.n_kb + b) * 2 + 1] = _mm512_reduce_add_epi32(q1);
    }
  }
}

}  // namespace g3e::qk
