// NEON (AdvSIMD) implementation of vec.h for aarch64. AdvSIMD, FMLA and the half-float
// conversion FCVTL are part of the ARMv8.0-A baseline, so this file needs no target flags and
// runs on every aarch64 CPU. Checked against vec_scalar.cpp by tests/cpp/test_vec_ops.cpp.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/vec.h"

namespace g3e {

namespace {

// exp(x) for float lanes: x = n ln2 + r with ln2 split in two for the reduction, then
// exp(r) ~ 1 + r + r^2 * P(r), the method and coefficients of exp256 in vec_avx2.cpp
// (Cephes expf). Lanes below -87.3, where exp(x) < 1.2e-38 (FLT_MIN), return 0.
// NOTE: inputs above about 88.4 give inf (n = 128 overflows the exponent field) although
// std::exp stays finite up to 88.72, as in vec_avx2.cpp. Callers pass x <= 0 (softmax) or
// only use 2 / (1 + exp(x)) (GELU), where inf gives the right limit.
inline float32x4_t exp4(float32x4_t x) {
  const uint32x4_t underflow = vcltq_f32(x, vdupq_n_f32(-87.3f));
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.7f));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  // 2^n built in the exponent field; n is in [-126, 128] after the clamp above.
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t result = vmulq_f32(p, vreinterpretq_f32_s32(bits));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(result), underflow));
}

float dot(const float* a, const float* b, int64_t n) {
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    acc2 = vfmaq_f32(acc2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
    acc3 = vfmaq_f32(acc3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
  }
  for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
  float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  const float32x4_t va = vdupq_n_f32(alpha);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void scale(float alpha, float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), alpha));
  for (; i < n; ++i) x[i] *= alpha;
}

float exp_shifted(float* x, int64_t n, float max_value) {
  const float32x4_t vmax = vdupq_n_f32(max_value);
  float32x4_t sum = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), vmax));
    vst1q_f32(x + i, e);
    sum = vaddq_f32(sum, e);
  }
  float total = vaddvq_f32(sum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max_value);
    total += x[i];
  }
  return total;
}

float max(const float* x, int64_t n) {
  int64_t i = 0;
  float m = x[0];
  if (n >= 4) {
    float32x4_t vm = vld1q_f32(x);
    for (i = 4; i + 4 <= n; i += 4) vm = vmaxq_f32(vm, vld1q_f32(x + i));
    m = vmaxvq_f32(vm);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  const float inv = 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), inv), vld1q_f32(w + i)));
  for (; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  const float32x4_t one = vdupq_n_f32(1.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t x = vld1q_f32(gate + i);
    // u = sqrt(2/pi) (x + 0.044715 x^3), tanh(u) = 1 - 2 / (1 + exp(2u)).
    const float32x4_t inner = vfmaq_f32(x, vmulq_n_f32(x, 0.044715f), vmulq_f32(x, x));
    const float32x4_t u = vmulq_n_f32(inner, kSqrt2OverPi);
    const float32x4_t t = vsubq_f32(one, vdivq_f32(vdupq_n_f32(2.0f), vaddq_f32(one, exp4(vaddq_f32(u, u)))));
    const float32x4_t g = vmulq_f32(vmulq_n_f32(x, 0.5f), vaddq_f32(one, t));
    vst1q_f32(gate + i, vmulq_f32(g, vld1q_f32(up + i)));
  }
  for (; i < n; ++i) {
    const float x = gate[i];
    gate[i] = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * up[i];
  }
}

// Float32 GEMM micro-kernel: MR rows of x times one panel of 32 weight columns (eight q
// registers). With MR = 2: 16 accumulators + 8 weight registers of the 32 AdvSIMD registers.
template <int MR>
void sgemm_tile(const float* panel, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t width) {
  constexpr int kVectors = kSgemmPanel / 4;
  float32x4_t acc[MR][kVectors];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < kVectors; ++j) acc[r][j] = vdupq_n_f32(0.0f);
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* wp = panel + kk * kSgemmPanel;
    float32x4_t w[kVectors];
    for (int j = 0; j < kVectors; ++j) w[j] = vld1q_f32(wp + 4 * j);
    for (int r = 0; r < MR; ++r) {
      const float32x4_t xb = vdupq_n_f32(x[r * ldx + kk]);
      for (int j = 0; j < kVectors; ++j) acc[r][j] = vfmaq_f32(acc[r][j], xb, w[j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    if (width == kSgemmPanel) {
      for (int j = 0; j < kVectors; ++j) vst1q_f32(y + r * ldy + 4 * j, acc[r][j]);
    } else {
      float tmp[kSgemmPanel];
      for (int j = 0; j < kVectors; ++j) vst1q_f32(tmp + 4 * j, acc[r][j]);
      for (int64_t c = 0; c < width; ++c) y[r * ldy + c] = tmp[c];
    }
  }
}

void sgemm(const float* panels, int64_t n, int64_t k, const float* x, int64_t m, int64_t p0, int64_t p1, float* y,
           int64_t ldy) {
  constexpr int kRows = 2;           // rows per micro-tile (register budget above)
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

// Four IEEE halves to float (FCVTL: exact, subnormals, infinities and NaN included).
inline float32x4_t load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

inline float half_to_float(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

void f16_to_f32(const uint16_t* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, load_f16(x + i));
  for (; i < n; ++i) out[i] = half_to_float(x[i]);
}

// Sixteen int8 values widened to four float vectors (exact: |q| <= 128).
inline void load_q8x16(const int8_t* p, float32x4_t (&out)[4]) {
  const int8x16_t q = vld1q_s8(p);
  const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
  out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
  out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
}

void q8_to_f32(const int8_t* x, const float* scales, float* out, int64_t n) {
  for (int64_t blk = 0; blk < n / kKVBlock; ++blk) {
    const float32x4_t s = vdupq_n_f32(scales[blk]);
    for (int64_t i = blk * kKVBlock; i < (blk + 1) * kKVBlock; i += 16) {
      float32x4_t q[4];
      load_q8x16(x + i, q);
      for (int j = 0; j < 4; ++j) vst1q_f32(out + i + 4 * j, vmulq_f32(s, q[j]));
    }
  }
}

}  // namespace

const VecOps& vec_ops_neon() {
  static const VecOps ops{"neon", dot, axpy, scale, exp_shifted, max, rms_norm, gelu_tanh_mul, sgemm,
                          dot_rows_by_pair<dot>, axpy_rows_by_pair<axpy>, f16_to_f32, q8_to_f32};
  return ops;
}

}  // namespace g3e

#endif  // defined(__aarch64__)
