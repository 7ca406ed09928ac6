// AVX2 + FMA implementation of vec.h (compiled with AVX2 flags; chosen at run time).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/vec.h"

namespace g3e {

namespace {

// exp(x) for float lanes; the same method and coefficients as exp512 in vec_avx512.cpp.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void scale(float alpha, float* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(va, _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] *= alpha;
}

float exp_shifted(float* x, int64_t n, float max_value) {
  const __m256 vmax = _mm256_set1_ps(max_value);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum(sum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max_value);
    total += x[i];
  }
  return total;
}

float max(const float* x, int64_t n) {
  int64_t i = 0;
  float m = x[0];
  if (n >= 8) {
    __m256 vm = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    m = hmax(vm);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  const float inv = 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  const __m256 c0 = _mm256_set1_ps(0.7978845608028654f);
  const __m256 c1 = _mm256_set1_ps(0.044715f);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 two = _mm256_set1_ps(2.0f);
  const __m256 half = _mm256_set1_ps(0.5f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(gate + i);
    const __m256 u = _mm256_mul_ps(c0, _mm256_fmadd_ps(_mm256_mul_ps(c1, x), _mm256_mul_ps(x, x), x));
    const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(one, exp256(_mm256_add_ps(u, u)))));
    const __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(g, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    const float x = gate[i];
    gate[i] = 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))) * up[i];
  }
}

// Float32 GEMM micro-kernel: MR rows of x times one panel of 32 weight columns (four ymm).
template <int MR>
void sgemm_tile(const float* panel, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t width) {
  __m256 acc[MR][4];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* wp = panel + kk * kSgemmPanel;
    const __m256 w0 = _mm256_loadu_ps(wp), w1 = _mm256_loadu_ps(wp + 8);
    const __m256 w2 = _mm256_loadu_ps(wp + 16), w3 = _mm256_loadu_ps(wp + 24);
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * ldx + kk);
      acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(xb, w2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(xb, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    if (width == kSgemmPanel) {
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + r * ldy + 8 * j, acc[r][j]);
    } else {
      alignas(32) float tmp[kSgemmPanel];
      for (int j = 0; j < 4; ++j) _mm256_store_ps(tmp + 8 * j, acc[r][j]);
      for (int64_t c = 0; c < width; ++c) y[r * ldy + c] = tmp[c];
    }
  }
}

void sgemm(const float* panels, int64_t n, int64_t k, const float* x, int64_t m, int64_t p0, int64_t p1, float* y,
           int64_t ldy) {
  constexpr int kRows = 2;           // rows per micro-tile: 8 accumulators + 4 weight registers
  constexpr int64_t kRowBlock = 96;  // rows of x kept hot in cache while panels stream past
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t i1 = std::min(m, i0 + kRowBlock);
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = panels + p * k * kSgemmPanel;
      const int64_t width = std::min<int64_t>(kSgemmPanel, n - p * kSgemmPanel);
      float* yp = y + p * kSgemmPanel;
      int64_t i = i0;
      for (; i + kRows <= i1; i += kRows) sgemm_tile<kRows>(panel, k, x + i * k, k, yp + i * ldy, ldy, width);
      if (i < i1) sgemm_tile<1>(panel, k, x + i * k, k, yp + i * ldy, ldy, width);
    }
  }
}

inline __m256 load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

void f16_to_f32(const uint16_t* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_f16(x + i));
  for (; i < n; ++i) out[i] = half_to_float(x[i]);
}

inline __m256 load_q8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

void q8_to_f32(const int8_t* x, const float* scales, float* out, int64_t n) {
  for (int64_t blk = 0; blk < n / kKVBlock; ++blk) {
    const __m256 s = _mm256_set1_ps(scales[blk]);
    for (int64_t i = blk * kKVBlock; i < (blk + 1) * kKVBlock; i += 8) {
      _mm256_storeu_ps(out + i, _mm256_mul_ps(s, load_q8(x + i)));
    }
  }
}

// Attention products (see vec.h). With 16 vector registers, dot_rows takes 2 query rows and
// 2 keys at a time, with dot's two accumulators per pair, and axpy_rows keeps a tile of at
// most 8 accumulators while the value rows stream past. Other shapes fall back to dot and axpy.
void dot_rows(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t count, int64_t n,
              float* s, int64_t lds) {
  int64_t r = 0;
  if (n % 16 == 0) {
    for (; r + 2 <= rows; r += 2) {
      int64_t j = 0;
      for (; j + 2 <= count; j += 2) {
        __m256 a0[2][2], a1[2][2];
        for (int rr = 0; rr < 2; ++rr) a0[rr][0] = a0[rr][1] = a1[rr][0] = a1[rr][1] = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) {
          __m256 k0[2], k1[2];
          for (int jj = 0; jj < 2; ++jj) {
            k0[jj] = _mm256_loadu_ps(k + (j + jj) * ldk + i);
            k1[jj] = _mm256_loadu_ps(k + (j + jj) * ldk + i + 8);
          }
          for (int rr = 0; rr < 2; ++rr) {
            const __m256 q0 = _mm256_loadu_ps(q + (r + rr) * ldq + i);
            const __m256 q1 = _mm256_loadu_ps(q + (r + rr) * ldq + i + 8);
            for (int jj = 0; jj < 2; ++jj) {
              a0[rr][jj] = _mm256_fmadd_ps(q0, k0[jj], a0[rr][jj]);
              a1[rr][jj] = _mm256_fmadd_ps(q1, k1[jj], a1[rr][jj]);
            }
          }
        }
        for (int rr = 0; rr < 2; ++rr) {
          for (int jj = 0; jj < 2; ++jj) s[(r + rr) * lds + j + jj] = hsum(_mm256_add_ps(a0[rr][jj], a1[rr][jj]));
        }
      }
      for (; j < count; ++j) {
        for (int rr = 0; rr < 2; ++rr) s[(r + rr) * lds + j] = dot(q + (r + rr) * ldq, k + j * ldk, n);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t j = 0; j < count; ++j) s[r * lds + j] = dot(q + r * ldq, k + j * ldk, n);
  }
}

// R rows x 8 X outputs in registers; n is a multiple of 8 X.
template <int R, int X>
void axpy_rows_columns(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t count, int64_t n, float* out,
                       int64_t ldo) {
  for (int64_t c0 = 0; c0 < n; c0 += 8 * X) {
    __m256 acc[R][X];
    for (int r = 0; r < R; ++r) {
      for (int x = 0; x < X; ++x) acc[r][x] = _mm256_loadu_ps(out + r * ldo + c0 + 8 * x);
    }
    for (int64_t j = 0; j < count; ++j) {
      __m256 vx[X];
      for (int x = 0; x < X; ++x) vx[x] = _mm256_loadu_ps(v + j * ldv + c0 + 8 * x);
      for (int r = 0; r < R; ++r) {
        const __m256 pr = _mm256_set1_ps(p[r * ldp + j]);
        for (int x = 0; x < X; ++x) acc[r][x] = _mm256_fmadd_ps(pr, vx[x], acc[r][x]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int x = 0; x < X; ++x) _mm256_storeu_ps(out + r * ldo + c0 + 8 * x, acc[r][x]);
    }
  }
}

void axpy_rows(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t ldv, int64_t count, int64_t n,
               float* out, int64_t ldo) {
  if (n % 32 != 0) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < count; ++j) axpy(p[r * ldp + j], v + j * ldv, out + r * ldo, n);
    }
    return;
  }
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) axpy_rows_columns<4, 2>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo);
  switch (rows - r) {
    case 3: axpy_rows_columns<3, 2>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    case 2: axpy_rows_columns<2, 4>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    case 1: axpy_rows_columns<1, 4>(p + r * ldp, ldp, v, ldv, count, n, out + r * ldo, ldo); break;
    default: break;
  }
}

}  // namespace

const VecOps& vec_ops_avx2() {
  static const VecOps ops{"avx2", dot, axpy, scale, exp_shifted, max, rms_norm, gelu_tanh_mul, sgemm,
                          dot_rows, axpy_rows, f16_to_f32, q8_to_f32};
  return ops;
}

}  // namespace g3e
