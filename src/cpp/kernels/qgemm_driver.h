// Loop nest shared by the SIMD qblock kernels: picks the micro-kernel instance for the format
// and walks activation rows and weight tiles. Included by each *_<isa>.cpp, so every ISA gets
// its own copy compiled with its flags. Internal.
//
// K (the ISA's kernel struct) provides:
//   template <int BITS, int SUB, int MR, int NT>
//   static void micro(const QPanel&, const QActs&, int64_t tile, int64_t row0, float* y, int64_t ldy);
//   static constexpr int kGemvNT, kGemmMR, kGemmNT, kPrefetchBytes;
#pragma once

#include <algorithm>

#include "kernels/qformat.h"

namespace g3e::qk {

namespace driver_detail {

// Tiles [t0, t1) for activation rows [i0, i0 + MR), NT tiles at a time.
template <class K, int BITS, int SUB, int MR, int NT>
inline void row_group(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, int64_t i0, float* y, int64_t ldy) {
  int64_t t = t0;
  for (; t + NT <= t1; t += NT) K::template micro<BITS, SUB, MR, NT>(w, a, t, i0, y, ldy);
  for (; t < t1; ++t) K::template micro<BITS, SUB, MR, 1>(w, a, t, i0, y, ldy);
}

// Rows [i, m) in groups of at most 3 (the tail below one GEMM register tile).
template <class K, int BITS, int SUB>
inline void tail_rows(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, int64_t i, float* y, int64_t ldy) {
  constexpr int NT = K::kGemmNT;
  constexpr int R3 = K::kGemmMR > 3 ? 3 : 1;
  constexpr int R2 = K::kGemmMR > 2 ? 2 : 1;
  while (i < a.m) {
    const int64_t rem = a.m - i;
    if (R3 == 3 && rem >= 3) {
      row_group<K, BITS, SUB, R3, NT>(w, a, t0, t1, i, y, ldy);
      i += R3;
    } else if (R2 == 2 && rem >= 2) {
      row_group<K, BITS, SUB, R2, NT>(w, a, t0, t1, i, y, ldy);
      i += R2;
    } else {
      row_group<K, BITS, SUB, 1, NT>(w, a, t0, t1, i, y, ldy);
      i += 1;
    }
  }
}

template <class K, int BITS, int SUB>
void run_format(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  const int64_t m = a.m;
  constexpr int MR = K::kGemmMR;
  if (m == 1) {
    // GEMV: every weight byte is read once. The micro-kernel prefetches K::kPrefetchBytes ahead
    // of where it reads, so the first stretch of the range is requested here, all at once.
    const char* start = reinterpret_cast<const char*>(w.tile(t0));
    const int64_t head = std::min<int64_t>(K::kPrefetchBytes, (t1 - t0) * w.tile_stride);
    for (int64_t off = 0; off < head; off += 64) __builtin_prefetch(start + off, 0, 3);
    return row_group<K, BITS, SUB, 1, K::kGemvNT>(w, a, t0, t1, 0, y, ldy);
  }
  if (m < MR) return tail_rows<K, BITS, SUB>(w, a, t0, t1, 0, y, ldy);
  // GEMM: a chunk of tiles small enough to stay in L2 is swept by all groups of MR rows.
  const int64_t chunk = std::max<int64_t>(K::kGemmNT, (int64_t{768} << 10) / std::max<int64_t>(1, w.tile_stride));
  for (int64_t tc = t0; tc < t1; tc += chunk) {
    const int64_t te = std::min(t1, tc + chunk);
    int64_t i = 0;
    for (; i + MR <= m; i += MR) row_group<K, BITS, SUB, MR, K::kGemmNT>(w, a, tc, te, i, y, ldy);
    tail_rows<K, BITS, SUB>(w, a, tc, te, i, y, ldy);
  }
}

}  // namespace driver_detail

// Returns false for a format this driver has no instance for (the caller falls back to scalar).
template <class K>
bool drive_qgemm(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  using namespace driver_detail;
  const int bits = w.f.bits, sub = w.f.sub;
  if (sub == 32) {
    switch (bits) {
      case 8: run_format<K, 8, 32>(w, a, t0, t1, y, ldy); return true;
      case 5: run_format<K, 5, 32>(w, a, t0, t1, y, ldy); return true;
      case 4: run_format<K, 4, 32>(w, a, t0, t1, y, ldy); return true;
      default: return false;
    }
  }
  if (sub == 16) {
    switch (bits) {
      case 6: run_format<K, 6, 16>(w, a, t0, t1, y, ldy); return true;
      case 4: run_format<K, 4, 16>(w, a, t0, t1, y, ldy); return true;
      default: return false;
    }
  }
  return false;
}

}  // namespace g3e::qk
