// Float32 vector operations used around the matrix multiplications: dot products and
// accumulation for attention, softmax, RMSNorm and the GeGLU activation. One implementation
// per instruction set, each checked against the scalar reference (vec_scalar.cpp).
#pragma once

#include <cstdint>

namespace g3e {

struct VecOps {
  const char* isa;
  // Returns sum(a[i] * b[i]) for i < n.
  float (*dot)(const float* a, const float* b, int64_t n);
  // y[i] += alpha * x[i].
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);
  // x[i] *= alpha.
  void (*scale)(float alpha, float* x, int64_t n);
  // x[i] = exp(x[i] - max_value); returns the sum of the new values.
  float (*exp_shifted)(float* x, int64_t n, float max_value);
  // Returns max(x[0..n)), n >= 1.
  float (*max)(const float* x, int64_t n);
  // out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may equal x. Gemma's (1 + w) is folded
  // into w by the GGUF converter.
  void (*rms_norm)(const float* x, const float* w, float* out, int64_t n, float eps);
  // gate[i] = gelu_tanh(gate[i]) * up[i], with GELU's tanh approximation.
  void (*gelu_tanh_mul)(float* gate, const float* up, int64_t n);
  // Float32 GEMM on weights packed by sgemm_pack: y[i * ldy + c] = x[i, :] . W[c, :] for
  // i < m and every column c of panels [p0, p1).
  void (*sgemm)(const float* panels, int64_t n, int64_t k, const float* x, int64_t m, int64_t p0, int64_t p1,
                float* y, int64_t ldy);

  // Attention products over rows with strides. dot_rows: s[r * lds + j] = dot(q + r * ldq,
  // k + j * ldk, n) for r < rows, j < count, each bit for bit the value `dot` returns.
  // axpy_rows: out[r * ldo + c] += p[r * ldp + j] * v[j * ldv + c] for c < n, j = 0, 1, ..
  // count - 1 in turn, bit for bit a sequence of `axpy` calls. No result depends on the other
  // rows and keys, so attention does not depend on how tokens are batched.
  void (*dot_rows)(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t count, int64_t n,
                   float* s, int64_t lds);
  void (*axpy_rows)(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t ldv, int64_t count, int64_t n,
                    float* out, int64_t ldo);

  // KV cache rows to float32, exactly: out[i] = x[i] for IEEE half floats, and for int8 in
  // blocks of kKVBlock with one float scale per block, out[i] = scales[i / kKVBlock] * x[i]
  // (n a multiple of kKVBlock).
  void (*f16_to_f32)(const uint16_t* x, float* out, int64_t n);
  void (*q8_to_f32)(const int8_t* x, const float* scales, float* out, int64_t n);
};

// dot_rows and axpy_rows as loops over an implementation's dot and axpy, for instruction sets
// without blocked versions.
template <float (*Dot)(const float*, const float*, int64_t)>
void dot_rows_by_pair(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t count, int64_t n,
                      float* s, int64_t lds) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < count; ++j) s[r * lds + j] = Dot(q + r * ldq, k + j * ldk, n);
  }
}

template <void (*Axpy)(float, const float*, float*, int64_t)>
void axpy_rows_by_pair(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t ldv, int64_t count,
                       int64_t n, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < count; ++j) Axpy(p[r * ldp + j], v + j * ldv, out + r * ldo, n);
  }
}

constexpr int64_t kKVBlock = 32;
// Quantizes n floats (a multiple of kKVBlock) to int8 with absmax scales per block.
void quantize_kv_q8(const float* x, int8_t* q, float* scales, int64_t n);

// Float32 weights W (n, k) for sgemm are stored in panels of kSgemmPanel output columns,
// k-major: element (c, kk) of panel p = c / kSgemmPanel is at panels[(p * k + kk) * kSgemmPanel + c % kSgemmPanel].
// Columns past n in the last panel are zero.
constexpr int64_t kSgemmPanel = 32;
inline int64_t sgemm_panel_count(int64_t n) { return (n + kSgemmPanel - 1) / kSgemmPanel; }
// Packs row r of W from src (n, k) row-major; out holds sgemm_panel_count(n) * k * kSgemmPanel floats.
void sgemm_pack_row(const float* row, int64_t r, int64_t k, float* out);
// Reads row r of W back from the panels.
void sgemm_unpack_row(const float* panels, int64_t r, int64_t k, float* out);

const VecOps& vec_ops_scalar();
#if defined(__x86_64__) || defined(_M_X64)
const VecOps& vec_ops_avx2();
const VecOps& vec_ops_avx512();
#endif
#if defined(__aarch64__)
const VecOps& vec_ops_neon();
#endif

// The implementation for the instruction set chosen at start-up (active_isa()).
const VecOps& vec_ops();
// The implementation for a named instruction set, or nullptr when this build or CPU lacks it.
const VecOps* vec_ops_for(const char* isa);

}  // namespace g3e
