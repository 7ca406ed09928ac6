// Scalar reference kernels for the qblock layout: activation quantization and the int8 GEMM.
// The SIMD kernels compute exactly the same integer sums and combine them with the same
// sequence of fused multiply-adds, so they can be checked against this code to rounding level.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/ggml_types.h"
#include "kernels/qformat.h"

namespace g3e::qk {

namespace {
inline int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }
}  // namespace

int64_t acts_scratch_bytes(int64_t m, int64_t cols) {
  const int64_t n_kb = cols / kBlockK;
  return align64(m * cols) + align64(m * n_kb * 4) + align64(m * n_kb * 2 * 4);
}

QActs acts_view(void* scratch, int64_t m, int64_t cols) {
  QActs a;
  a.m = m;
  a.cols = cols;
  a.n_kb = cols / kBlockK;
  uint8_t* p = static_cast<uint8_t*>(scratch);
  a.xq = reinterpret_cast<int8_t*>(p);
  p += align64(m * cols);
  a.xs = reinterpret_cast<float*>(p);
  p += align64(m * a.n_kb * 4);
  a.bsum = reinterpret_cast<int32_t*>(p);
  return a;
}

// Per block of 32: xs = max|x| / 127, xq = round-half-even(x * (1 / xs)) (ggml's Q8_0 rule up
// to the tie-breaking, which every ISA here shares), bsum = sums of xq over each half.
// Every ISA treats two kinds of block alike:
// - a block with an infinite or NaN value stores xq = 0, bsum = 0 and xs = NaN, so every
//   output that uses it is NaN. Converting such values to int8 is undefined in C++ (SIMD
//   conversions give INT_MIN), and the GEMM would then overflow int32 in -zp * bsum;
// - a block with max|x| below about 3.7e-37 stores xq = 0, because 1 / xs overflows to
//   infinity there. The absolute error per value is below 3.7e-37.
void quantize_acts_scalar(const float* x, const QActs& a, int64_t r0, int64_t r1) {
  int8_t* xq_all = const_cast<int8_t*>(a.xq);
  float* xs_all = const_cast<float*>(a.xs);
  int32_t* bsum_all = const_cast<int32_t*>(a.bsum);
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t b = 0; b < a.n_kb; ++b) {
      const float* xb = x + i * a.cols + b * kBlockK;
      int8_t* q = xq_all + i * a.cols + b * kBlockK;
      float amax = 0.0f;
      bool finite = true;
      for (int k = 0; k < kBlockK; ++k) {
        amax = std::max(amax, std::fabs(xb[k]));
        finite = finite && std::isfinite(xb[k]);
      }
      if (!finite) {
        std::memset(q, 0, kBlockK);
        xs_all[i * a.n_kb + b] = std::numeric_limits<float>::quiet_NaN();
        bsum_all[(i * a.n_kb + b) * 2 + 0] = 0;
        bsum_all[(i * a.n_kb + b) * 2 + 1] = 0;
        continue;
      }
      const float d = amax / 127.0f;
      // 1 / d is infinite for d == 0 and for d below about 2.9e-39 (max|x| below about 3.7e-37).
      const float id = d != 0.0f && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;
      int32_t s[2] = {0, 0};
      for (int k = 0; k < kBlockK; ++k) {
        q[k] = static_cast<int8_t>(std::nearbyint(xb[k] * id));
        s[k / 16] += q[k];
      }
      xs_all[i * a.n_kb + b] = d;
      bsum_all[(i * a.n_kb + b) * 2 + 0] = s[0];
      bsum_all[(i * a.n_kb + b) * 2 + 1] = s[1];
    }
  }
}

namespace {

// u[r][k] of one (tile, block).
void unpack_block(const QFormat& f, const uint8_t* q, uint8_t (*u)[kBlockK]) {
  if (f.bits == 8) {
    for (int g = 0; g < 8; ++g)
      for (int r = 0; r < kTileRows; ++r)
        for (int j = 0; j < 4; ++j) u[r][4 * g + j] = q[64 * g + 4 * r + j];
    return;
  }
  for (int p = 0; p < 4; ++p)
    for (int r = 0; r < kTileRows; ++r)
      for (int j = 0; j < 4; ++j) {
        const uint8_t v = q[64 * p + 4 * r + j];
        u[r][8 * p + j] = v & 15;
        u[r][8 * p + 4 + j] = v >> 4;
      }
  for (int h = 0; h < f.n_planes(); ++h)
    for (int g = 0; g < 8; ++g) {
      uint64_t word;
      std::memcpy(&word, q + 256 + 64 * h + 8 * g, 8);
      for (int r = 0; r < kTileRows; ++r)
        for (int j = 0; j < 4; ++j) u[r][4 * g + j] |= static_cast<uint8_t>(((word >> (4 * r + j)) & 1) << (4 + h));
    }
}

}  // namespace

void qgemm_scalar(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  const QFormat& f = w.f;
  const int n_sub = f.n_sub();
  uint8_t u[kTileRows][kBlockK];
  float acc[kTileRows];
  for (int64_t t = t0; t < t1; ++t) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, w.rows - t * kTileRows));
    for (int64_t i = 0; i < a.m; ++i) {
      std::fill(acc, acc + kTileRows, 0.0f);
      const int8_t* xq = a.xq + i * a.cols;
      for (int64_t b = 0; b < w.n_kb; ++b) {
        unpack_block(f, w.quants(t, b), u);
        const float xs = a.xs[i * a.n_kb + b];
        const int32_t* bs = a.bsum + (i * a.n_kb + b) * 2;
        for (int s = 0; s < n_sub; ++s) {
          const int32_t bsum = f.sub == 16 ? bs[s] : bs[0] + bs[1];
          const float xsum = xs * static_cast<float>(bsum);
          for (int r = 0; r < rows; ++r) {
            int32_t dot = -f.zp * bsum;
            for (int k = s * f.sub; k < (s + 1) * f.sub; ++k) dot += u[r][k] * xq[b * kBlockK + k];
            float ws;
            if (f.scale_f16) {
              ws = fp16_to_fp32(static_cast<const uint16_t*>(w.scales(t, b))[s * kTileRows + r]);
            } else {
              ws = static_cast<const float*>(w.scales(t, b))[s * kTileRows + r];
            }
            acc[r] = std::fma(static_cast<float>(dot), ws * xs, acc[r]);
            if (f.has_min) acc[r] = std::fma(w.mins(t, b)[s * kTileRows + r], xsum, acc[r]);
          }
        }
      }
      for (int r = 0; r < rows; ++r) y[i * ldy + t * kTileRows + r] = acc[r];
    }
  }
}

}  // namespace g3e::qk
