// AVX-512F implementation of vec.h (compiled with AVX-512 flags; chosen at run time).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/vec.h"

namespace g3e {

namespace {

// exp(x) for float lanes: n = round(x / ln 2), r = x - n ln 2 in two parts, a degree-6
// polynomial for exp(r) (Cephes expf coefficients), then scaling by 2^n through the exponent
// bits. Relative error about 2e-7 over the clamped range [-87.3, 88.7].
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1);
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void scale(float alpha, float* x, int64_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, x + i)));
  }
}

float exp_shifted(float* x, int64_t n, float max_value) {
  const __m512 vmax = _mm512_set1_ps(max_value);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));
    _mm512_mask_storeu_ps(x + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

float max(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + i));
  }
  return _mm512_reduce_max_ps(m);
}

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  const float inv = 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv),
                                                    _mm512_maskz_loadu_ps(m, w + i)));
  }
}

void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  const __m512 c0 = _mm512_set1_ps(0.7978845608028654f);
  const __m512 c1 = _mm512_set1_ps(0.044715f);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512 half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_mul_ps(c0, _mm512_fmadd_ps(_mm512_mul_ps(c1, x), _mm512_mul_ps(x, x), x));
    // tanh(u) = 1 - 2 / (1 + exp(2u)); saturates to +-1 without overflow thanks to the clamp.
    const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(one, exp512(_mm512_add_ps(u, u)))));
    const __m512 g = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, t));
    _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// Float32 GEMM micro-kernel: MR rows of x times one panel of 32 weight columns (two zmm).
template <int MR>
void sgemm_tile(const float* panel, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t width) {
  __m512 acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 w0 = _mm512_loadu_ps(panel + kk * kSgemmPanel);
    const __m512 w1 = _mm512_loadu_ps(panel + kk * kSgemmPanel + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * ldx + kk]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
    }
  }
  const __mmask16 m0 = tail_mask(width), m1 = tail_mask(width - 16 > 0 ? width - 16 : 0);
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    if (width > 16) _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
}

void sgemm(const float* panels, int64_t n, int64_t k, const float* x, int64_t m, int64_t p0, int64_t p1, float* y,
           int64_t ldy) {
  constexpr int kRows = 6;           // rows per micro-tile: 12 accumulators + 2 weight registers
  constexpr int64_t kRowBlock = 96;  // rows of x kept hot in cache while panels stream past
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t i1 = std::min(m, i0 + kRowBlock);
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = panels + p * k * kSgemmPanel;
      const int64_t width = std::min<int64_t>(kSgemmPanel, n - p * kSgemmPanel);
      float* yp = y + p * kSgemmPanel;
      int64_t i = i0;
      for (; i + kRows <= i1; i += kRows) sgemm_tile<kRows>(panel, k, x + i * k, k, yp + i * ldy, ldy, width);
      switch (i1 - i) {
        case 5: sgemm_tile<5>(panel, k, x + i * k, k, yp + i * ldy, ldy, width); break;
        case 4: sgemm_tile<4>(panel, k, x + i * k, k, yp + i * ldy, ldy, width); break;
        case 3: sgemm_tile<3>(panel, k, x + i * k, k, yp + i * ldy, ldy, width); break;
        case 2: sgemm_tile<2>(panel, k, x + i * k, k, yp + i * ldy, ldy, width); break;
        case 1: sgemm_tile<1>(panel, k, x + i * k, k, yp + i * ldy, ldy, width); break;
        default: break;
      }
    }
  }
}

void f16_to_f32(const uint16_t* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
  }
}

inline __m512 load_q8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

void q8_to_f32(const int8_t* x, const float* scales, float* out, int64_t n) {
  for (int64_t blk = 0; blk < n / kKVBlock; ++blk) {
    const __m512 s = _mm512_set1_ps(scales[blk]);
    const int64_t i = blk * kKVBlock;
    _mm512_storeu_ps(out + i, _mm512_mul_ps(s, load_q8(x + i)));
    _mm512_storeu_ps(out + i + 16, _mm512_mul_ps(s, load_q8(x + i + 16)));
  }
}

// Attention products (see vec.h). dot_rows takes 4 query rows and 2 keys at a time, with
// dot's two accumulators per pair. axpy_rows keeps a tile of outputs in registers while the
// value rows stream past. Other shapes fall back to dot.
void dot_rows(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t count, int64_t n,
              float* s, int64_t lds) {
  int64_t r = 0;
  if (n % 32 == 0) {
    for (; r + 4 <= rows; r += 4) {
      int64_t j = 0;
      for (; j + 2 <= count; j += 2) {
        __m512 a0[4][2], a1[4][2];
        for (int rr = 0; rr < 4; ++rr) a0[rr][0] = a0[rr][1] = a1[rr][0] = a1[rr][1] = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 32) {
          __m512 k0[2], k1[2];
          for (int jj = 0; jj < 2; ++jj) {
            k0[jj] = _mm512_loadu_ps(k + (j + jj) * ldk + i);
            k1[jj] = _mm512_loadu_ps(k + (j + jj) * ldk + i + 16);
          }
          for (int rr = 0; rr < 4; ++rr) {
            const __m512 q0 = _mm512_loadu_ps(q + (r + rr) * ldq + i);
            const __m512 q1 = _mm512_loadu_ps(q + (r + rr) * ldq + i + 16);
            for (int jj = 0; jj < 2; ++jj) {
              a0[rr][jj] = _mm512_fmadd_ps(q0, k0[jj], a0[rr][jj]);
              a1[rr][jj] = _mm512_fmadd_ps(q1, k1[jj], a1[rr][jj]);
            }
          }
        }
        for (int rr = 0; rr < 4; ++rr) {
          for (int jj = 0; jj < 2; ++jj) {
            s[(r + rr) * lds + j + jj] = _mm512_reduce_add_ps(_mm512_add_ps(a0[rr][jj], a1[rr][jj]));
          }
        }
      }
      for (; j < count; ++j) {
        for (int rr = 0; rr < 4; ++rr) s[(r + rr) * lds + j] = dot(q + (r + rr) * ldq, k + j * ldk, n);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t j = 0; j < count; ++j) s[r * lds + j] = dot(q + r * ldq, k + j * ldk, n);
  }
}

// R rows x 16 X outputs in registers. Fewer rows take wider tiles, so that decode reads each
// value row in one or two passes rather than four.
template <int R, int X>
void axpy_rows_tile(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t count, int64_t c0, int64_t n,
                    float* out, int64_t ldo) {
  __mmask16 mask[X];
  for (int x = 0; x < X; ++x) mask[x] = tail_mask(std::max<int64_t>(0, n - c0 - 16 * x));
  __m512 acc[R][X];
  for (int r = 0; r < R; ++r) {
    for (int x = 0; x < X; ++x) acc[r][x] = _mm512_maskz_loadu_ps(mask[x], out + r * ldo + c0 + 16 * x);
  }
  for (int64_t j = 0; j < count; ++j) {
    __m512 vx[X];
    for (int x = 0; x < X; ++x) vx[x] = _mm512_maskz_loadu_ps(mask[x], v + j * ldv + c0 + 16 * x);
    for (int r = 0; r < R; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * ldp + j]);
      for (int x = 0; x < X; ++x) acc[r][x] = _mm512_fmadd_ps(pr, vx[x], acc[r][x]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int x = 0; x < X; ++x) _mm512_mask_storeu_ps(out + r * ldo + c0 + 16 * x, mask[x], acc[r][x]);
  }
}

template <int R, int X>
void axpy_rows_columns(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t count, int64_t n, float* out,
                       int64_t ldo) {
  for (int64_t c0 = 0; c0 < n; c0 += 16 * X) axpy_rows_tile<R, X>(p, ldp, v, ldv, count, c0, n, out, ldo);
}

void axpy_rows(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t ldv, int64_t count, int64_t n,
               float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) axpy_rows_columns<4, 4>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo);
  switch (rows - r) {
    case 3: axpy_rows_columns<3, 8>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    case 2: axpy_rows_columns<2, 8>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    case 1: axpy_rows_columns<1, 16>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    default: break;
  }
}

}  // namespace

const VecOps& vec_ops_avx512() {
  static const VecOps ops{"avx512", dot, axpy, scale, exp_shifted, max, rms_norm, gelu_tanh_mul, sgemm,
                          dot_rows, axpy_rows, f16_to_f32, q8_to_f32};
  return ops;
}

}  // namespace g3e
