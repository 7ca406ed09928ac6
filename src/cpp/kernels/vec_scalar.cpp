// Scalar reference for vec.h, and the selection of the implementation by instruction set.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/ggml_types.h"
#include "kernels/matmul.h"
#include "kernels/vec.h"

namespace g3e {

namespace {

float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void scale(float alpha, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

float exp_shifted(float* x, int64_t n, float max_value) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_value);
    sum += x[i];
  }
  return sum;
}

float max(const float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = gate[i];
    gate[i] = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * up[i];
  }
}

void sgemm(const float* panels, int64_t n, int64_t k, const float* x, int64_t m, int64_t p0, int64_t p1, float* y,
           int64_t ldy) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = panels + p * k * kSgemmPanel;
    const int64_t width = std::min<int64_t>(kSgemmPanel, n - p * kSgemmPanel);
    for (int64_t i = 0; i < m; ++i) {
      float acc[kSgemmPanel] = {};
      const float* xr = x + i * k;
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t c = 0; c < kSgemmPanel; ++c) acc[c] += xr[kk] * panel[kk * kSgemmPanel + c];
      }
      for (int64_t c = 0; c < width; ++c) y[i * ldy + p * kSgemmPanel + c] = acc[c];
    }
  }
}

void f16_to_f32(const uint16_t* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(x[i]);
}

void q8_to_f32(const int8_t* x, const float* scales, float* out, int64_t n) {
  for (int64_t blk = 0; blk < n / kKVBlock; ++blk) {
    for (int64_t i = blk * kKVBlock; i < (blk + 1) * kKVBlock; ++i) out[i] = scales[blk] * static_cast<float>(x[i]);
  }
}

}  // namespace

void quantize_kv_q8(const float* x, int8_t* q, float* scales, int64_t n) {
  for (int64_t blk = 0; blk < n / kKVBlock; ++blk) {
    const float* xb = x + blk * kKVBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < kKVBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float scale = amax / 127.0f;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    scales[blk] = scale;
    for (int64_t i = 0; i < kKVBlock; ++i) {
      q[blk * kKVBlock + i] = static_cast<int8_t>(std::lrintf(xb[i] * inv));
    }
  }
}

void sgemm_pack_row(const float* row, int64_t r, int64_t k, float* out) {
  float* panel = out + (r / kSgemmPanel) * k * kSgemmPanel + r % kSgemmPanel;
  for (int64_t kk = 0; kk < k; ++kk) panel[kk * kSgemmPanel] = row[kk];
}

void sgemm_unpack_row(const float* panels, int64_t r, int64_t k, float* out) {
  const float* panel = panels + (r / kSgemmPanel) * k * kSgemmPanel + r % kSgemmPanel;
  for (int64_t kk = 0; kk < k; ++kk) out[kk] = panel[kk * kSgemmPanel];
}

const VecOps& vec_ops_scalar() {
  static const VecOps ops{"scalar", dot, axpy, scale, exp_shifted, max, rms_norm, gelu_tanh_mul, sgemm,
                          dot_rows_by_pair<dot>, axpy_rows_by_pair<axpy>, f16_to_f32, q8_to_f32};
  return ops;
}

const VecOps* vec_ops_for(const char* isa) {
  if (std::strcmp(isa, "scalar") == 0) return &vec_ops_scalar();
#if defined(__x86_64__) || defined(_M_X64)
  if (std::strncmp(isa, "avx2", 4) == 0) return &vec_ops_avx2();
  if (std::strncmp(isa, "avx512", 6) == 0) return &vec_ops_avx512();
#endif
#if defined(__aarch64__)
  if (std::strncmp(isa, "neon", 4) == 0) return &vec_ops_neon();
#endif
  return nullptr;
}

const VecOps& vec_ops() {
  // active_isa() is the single place that reads CPU features and GEMMA3_EDGE_ISA.
  static const VecOps* chosen = [] {
    const VecOps* ops = vec_ops_for(active_isa());
    return ops ? ops : &vec_ops_scalar();
  }();
  return *chosen;
}

}  // namespace g3e
