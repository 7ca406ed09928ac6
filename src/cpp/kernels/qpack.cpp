// Lossless repacking of GGUF integer types into the qblock layout (see qformat.h), and the way
// back (dequantization from the packed layout, bit-identical to ggml's dequantize_row_*).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/qpack.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/g3e_types.h"
#include "kernels/quant_blocks.h"

namespace g3e::qk {

namespace {

// One 32-element chunk of a source row, decoded to the qblock form: u, and the scale / min of
// its two halves (both halves equal for formats with a scale per 32).
struct Chunk {
  uint8_t u[kBlockK];
  uint16_t s16[2];  // scale_f16 formats
  float s32[2];     // f32-scale formats
  float c[2];       // mins (has_min formats)
};

using DecodeFn = void (*)(const uint8_t* row, int64_t b, Chunk& out);

void decode_q8_0(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ8_0*>(row)[b];
  for (int i = 0; i < 32; ++i) o.u[i] = static_cast<uint8_t>(x.qs[i] + 128);
  o.s16[0] = o.s16[1] = x.d;
}

void decode_q4_0(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ4_0*>(row)[b];
  for (int i = 0; i < 16; ++i) {
    o.u[i] = x.qs[i] & 15;
    o.u[i + 16] = x.qs[i] >> 4;
  }
  o.s16[0] = o.s16[1] = x.d;
}

void decode_q4_1(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ4_1*>(row)[b];
  for (int i = 0; i < 16; ++i) {
    o.u[i] = x.qs[i] & 15;
    o.u[i + 16] = x.qs[i] >> 4;
  }
  o.s16[0] = o.s16[1] = x.d;
  o.c[0] = o.c[1] = fp16_to_fp32(x.m);
}

void decode_q5_0(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ5_0*>(row)[b];
  uint32_t qh;
  std::memcpy(&qh, x.qh, 4);
  for (int i = 0; i < 16; ++i) {
    o.u[i] = static_cast<uint8_t>((x.qs[i] & 15) | (((qh >> i) & 1) << 4));
    o.u[i + 16] = static_cast<uint8_t>((x.qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4));
  }
  o.s16[0] = o.s16[1] = x.d;
}

void decode_q5_1(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ5_1*>(row)[b];
  uint32_t qh;
  std::memcpy(&qh, x.qh, 4);
  for (int i = 0; i < 16; ++i) {
    o.u[i] = static_cast<uint8_t>((x.qs[i] & 15) | (((qh >> i) & 1) << 4));
    o.u[i + 16] = static_cast<uint8_t>((x.qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4));
  }
  o.s16[0] = o.s16[1] = x.d;
  o.c[0] = o.c[1] = fp16_to_fp32(x.m);
}

void decode_q8_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ8_K*>(row)[b / 8];
  const int8_t* q = x.qs + 32 * (b % 8);
  for (int i = 0; i < 32; ++i) o.u[i] = static_cast<uint8_t>(q[i] + 128);
  o.s32[0] = o.s32[1] = x.d;
}

// Q2_K element e of a super-block: byte qs[32 * (e / 128) + e % 32], bits 2 * ((e / 32) % 4);
// its sub-block (scale and min) is e / 16.
void decode_q2_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ2_K*>(row)[b / 8];
  const int c32 = static_cast<int>(b % 8);
  const float d = fp16_to_fp32(x.d), dmin = fp16_to_fp32(x.dmin);
  for (int i = 0; i < 32; ++i) o.u[i] = (x.qs[32 * (c32 / 4) + i] >> (2 * (c32 % 4))) & 3;
  for (int h = 0; h < 2; ++h) {
    const uint8_t sc = x.scales[2 * c32 + h];
    o.s32[h] = d * static_cast<float>(sc & 0xF);
    o.c[h] = -(dmin * static_cast<float>(sc >> 4));
  }
}

// Q3_K: as Q2_K, plus a high bit from hmask[e % 32] bit (e / 32); the value is
// (low | high << 2) - 4.
void decode_q3_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ3_K*>(row)[b / 8];
  const int c32 = static_cast<int>(b % 8);
  int8_t scales[16];
  q3_K_scales(x.scales, scales);
  const float d = fp16_to_fp32(x.d);
  for (int i = 0; i < 32; ++i) {
    const int low = (x.qs[32 * (c32 / 4) + i] >> (2 * (c32 % 4))) & 3;
    const int high = (x.hmask[i] >> c32) & 1;
    o.u[i] = static_cast<uint8_t>(low | (high << 2));
  }
  for (int h = 0; h < 2; ++h) o.s32[h] = d * static_cast<float>(scales[2 * c32 + h]);
}

void decode_q4_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ4_K*>(row)[b / 8];
  const int c32 = static_cast<int>(b % 8);
  const uint8_t* q = x.qs + 32 * (c32 / 2);
  const int shift = 4 * (c32 % 2);
  for (int i = 0; i < 32; ++i) o.u[i] = (q[i] >> shift) & 15;
  uint8_t sc, m;
  get_scale_min_k4(c32, x.scales, &sc, &m);
  o.s32[0] = o.s32[1] = fp16_to_fp32(x.d) * static_cast<float>(sc);
  o.c[0] = o.c[1] = -(fp16_to_fp32(x.dmin) * static_cast<float>(m));
}

void decode_q5_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ5_K*>(row)[b / 8];
  const int c32 = static_cast<int>(b % 8);
  const uint8_t* q = x.qs + 32 * (c32 / 2);
  const int shift = 4 * (c32 % 2);
  for (int i = 0; i < 32; ++i) o.u[i] = static_cast<uint8_t>(((q[i] >> shift) & 15) | (((x.qh[i] >> c32) & 1) << 4));
  uint8_t sc, m;
  get_scale_min_k4(c32, x.scales, &sc, &m);
  o.s32[0] = o.s32[1] = fp16_to_fp32(x.d) * static_cast<float>(sc);
  o.c[0] = o.c[1] = -(fp16_to_fp32(x.dmin) * static_cast<float>(m));
}

// Q6_K: chunk c32 = 4 * half + quarter of a super-block; low nibbles from ql[64 * half + 32 *
// (quarter & 1) + i] (high nibble when quarter >= 2), two high bits from qh[32 * half + i] at
// bits 2 * quarter; value u - 32 with scale d * sc[e / 16].
void decode_q6_K(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockQ6_K*>(row)[b / 8];
  const int c32 = static_cast<int>(b % 8);
  const int half = c32 / 4, quarter = c32 % 4;
  const uint8_t* ql = x.ql + 64 * half + 32 * (quarter & 1);
  const uint8_t* qh = x.qh + 32 * half;
  const int shift = quarter >= 2 ? 4 : 0;
  for (int i = 0; i < 32; ++i) {
    o.u[i] = static_cast<uint8_t>(((ql[i] >> shift) & 15) | (((qh[i] >> (2 * quarter)) & 3) << 4));
  }
  const float d = fp16_to_fp32(x.d);
  for (int h = 0; h < 2; ++h) o.s32[h] = d * static_cast<float>(x.scales[2 * c32 + h]);
}

// Project types (g3e_types.h) have 128-element blocks with one f16 scale. Chunk b is a quarter
// of block b / 4 and keeps that block's scale, and u = q + zp gives back d * q exactly. G3E_SFP8
// values are not on a uniform grid, so it has no qblock layout and runs on the float32 path.
void decode_g3e_i8(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockG3EI8*>(row)[b / 4];
  const int8_t* q = x.qs + 32 * (b % 4);
  for (int i = 0; i < 32; ++i) o.u[i] = static_cast<uint8_t>(q[i] + 128);
  o.s16[0] = o.s16[1] = x.d;
}

// G3E_I4_ROW stores element 2j in the low nibble of byte j (Q4_0 puts j and j + 16 there).
void decode_g3e_i4(const uint8_t* row, int64_t b, Chunk& o) {
  const auto& x = reinterpret_cast<const BlockG3EI4*>(row)[b / 4];
  const uint8_t* q = x.qs + 16 * (b % 4);
  for (int j = 0; j < 16; ++j) {
    o.u[2 * j] = q[j] & 15;
    o.u[2 * j + 1] = q[j] >> 4;
  }
  o.s16[0] = o.s16[1] = x.d;
}

struct TypeFormat {
  QFormat f;
  DecodeFn decode;
};

bool type_format(GGMLType type, TypeFormat* out) {
  auto fmt = [](int bits, int sub, bool f16, bool min, int zp) {
    QFormat f;
    f.bits = bits;
    f.sub = sub;
    f.scale_f16 = f16;
    f.has_min = min;
    f.zp = zp;
    return f;
  };
  switch (static_cast<uint32_t>(type)) {
    case static_cast<uint32_t>(G3EType::I8_ROW): *out = {fmt(8, 32, true, false, 128), decode_g3e_i8}; return true;
    case static_cast<uint32_t>(G3EType::I4_ROW): *out = {fmt(4, 32, true, false, 8), decode_g3e_i4}; return true;
    default: break;
  }
  switch (type) {
    case GGMLType::Q8_0: *out = {fmt(8, 32, true, false, 128), decode_q8_0}; return true;
    case GGMLType::Q4_0: *out = {fmt(4, 32, true, false, 8), decode_q4_0}; return true;
    case GGMLType::Q4_1: *out = {fmt(4, 32, true, true, 0), decode_q4_1}; return true;
    case GGMLType::Q5_0: *out = {fmt(5, 32, true, false, 16), decode_q5_0}; return true;
    case GGMLType::Q5_1: *out = {fmt(5, 32, true, true, 0), decode_q5_1}; return true;
    case GGMLType::Q8_K: *out = {fmt(8, 32, false, false, 128), decode_q8_K}; return true;
    case GGMLType::Q2_K: *out = {fmt(4, 16, false, true, 0), decode_q2_K}; return true;
    case GGMLType::Q3_K: *out = {fmt(4, 16, false, false, 4), decode_q3_K}; return true;
    case GGMLType::Q4_K: *out = {fmt(4, 32, false, true, 0), decode_q4_K}; return true;
    case GGMLType::Q5_K: *out = {fmt(5, 32, false, true, 0), decode_q5_K}; return true;
    case GGMLType::Q6_K: *out = {fmt(6, 16, false, false, 32), decode_q6_K}; return true;
    default: return false;
  }
}

// Writes u[16 rows][32] of one (tile, block) into its quant block.
void store_block(const QFormat& f, const uint8_t (*u)[kBlockK], uint8_t* dst) {
  if (f.bits == 8) {
    for (int g = 0; g < 8; ++g)
      for (int r = 0; r < kTileRows; ++r)
        for (int j = 0; j < 4; ++j) dst[64 * g + 4 * r + j] = u[r][4 * g + j];
    return;
  }
  for (int p = 0; p < 4; ++p)
    for (int r = 0; r < kTileRows; ++r)
      for (int j = 0; j < 4; ++j) {
        dst[64 * p + 4 * r + j] = static_cast<uint8_t>((u[r][8 * p + j] & 15) | ((u[r][8 * p + 4 + j] & 15) << 4));
      }
  for (int h = 0; h < f.n_planes(); ++h) {
    for (int g = 0; g < 8; ++g) {
      uint64_t word = 0;
      for (int r = 0; r < kTileRows; ++r)
        for (int j = 0; j < 4; ++j) word |= static_cast<uint64_t>((u[r][4 * g + j] >> (4 + h)) & 1) << (4 * r + j);
      std::memcpy(dst + 256 + 64 * h + 8 * g, &word, 8);
    }
  }
}

}  // namespace

bool qblock_supports(GGMLType type) {
  TypeFormat tf;
  return type_format(type, &tf);
}

QMatrix qblock_pack(GGMLType type, const void* data, int64_t rows, int64_t cols,
                    const std::function<void(int64_t rows_done)>& progress) {
  TypeFormat tf;
  if (!type_format(type, &tf)) throw std::invalid_argument("qblock_pack: type has no qblock layout");
  if (cols % kBlockK != 0) throw std::invalid_argument("qblock_pack: cols must be a multiple of 32");
  const QFormat& f = tf.f;
  QMatrix m;
  QPanel& p = m.panel;
  p.f = f;
  p.rows = rows;
  p.cols = cols;
  p.n_tiles = (rows + kTileRows - 1) / kTileRows;
  p.n_kb = cols / kBlockK;
  p.tile_stride = (p.n_kb * (f.quant_bytes() + f.scale_bytes() + f.min_bytes()) + 63) / 64 * 64;
  const size_t total = static_cast<size_t>(p.n_tiles * p.tile_stride);
  m.storage.reset(static_cast<uint8_t*>(std::aligned_alloc(64, total)));
  if (!m.storage) throw std::bad_alloc();
  std::memset(m.storage.get(), 0, total);
  p.data = m.storage.get();

  const int64_t row_bytes = ggml_row_bytes(type, cols);
  const uint8_t* src = static_cast<const uint8_t*>(data);
  // Progress is reported about every 4 MB of source rows.
  const int64_t tiles_per_report = std::max<int64_t>(1, (int64_t{4} << 20) / (kTileRows * row_bytes));
  uint8_t u[kTileRows][kBlockK];
  Chunk ch;
  for (int64_t t = 0; t < p.n_tiles; ++t) {
    uint8_t* tile = m.storage.get() + t * p.tile_stride;
    for (int64_t b = 0; b < p.n_kb; ++b) {
      uint8_t* scales = tile + p.n_kb * f.quant_bytes() + b * f.scale_bytes();
      float* mins = reinterpret_cast<float*>(tile + p.n_kb * (f.quant_bytes() + f.scale_bytes()) + b * f.min_bytes());
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t n = t * kTileRows + r;
        if (n >= rows) {
          // Padding rows: u = zp and zero scales, so they contribute exactly 0.
          std::memset(u[r], f.zp, kBlockK);
          continue;
        }
        tf.decode(src + n * row_bytes, b, ch);
        std::memcpy(u[r], ch.u, kBlockK);
        for (int s = 0; s < f.n_sub(); ++s) {
          const int h = f.sub == 16 ? s : 0;
          if (f.scale_f16) {
            std::memcpy(scales + 2 * (s * kTileRows + r), &ch.s16[h], 2);
          } else {
            std::memcpy(scales + 4 * (s * kTileRows + r), &ch.s32[h], 4);
          }
          if (f.has_min) mins[s * kTileRows + r] = ch.c[h];
        }
      }
      store_block(f, u, tile + b * f.quant_bytes());
    }
    if (progress && ((t + 1) % tiles_per_report == 0 || t + 1 == p.n_tiles)) {
      progress(std::min(rows, (t + 1) * kTileRows));
    }
  }
  return m;
}

void qblock_dequantize_row(const QPanel& p, int64_t n, float* out) {
  const QFormat& f = p.f;
  const int64_t t = n / kTileRows;
  const int r = static_cast<int>(n % kTileRows);
  for (int64_t b = 0; b < p.n_kb; ++b) {
    for (int k = 0; k < kBlockK; ++k) {
      const int s = k / f.sub;
      float scale;
      if (f.scale_f16) {
        scale = fp16_to_fp32(static_cast<const uint16_t*>(p.scales(t, b))[s * kTileRows + r]);
      } else {
        scale = static_cast<const float*>(p.scales(t, b))[s * kTileRows + r];
      }
      const float q = static_cast<float>(qblock_get_u(p, t, b, r, k) - f.zp);
      float v = scale * q;
      if (f.has_min) v = v + p.mins(t, b)[s * kTileRows + r];
      out[b * kBlockK + k] = v;
    }
  }
}

int qblock_get_u(const QPanel& w, int64_t t, int64_t b, int r, int k) {
  const uint8_t* q = w.quants(t, b);
  if (w.f.bits == 8) return q[64 * (k / 4) + 4 * r + k % 4];
  const int p = k / 8, hi = (k / 4) % 2, j = k % 4;
  int u = (q[64 * p + 4 * r + j] >> (4 * hi)) & 15;
  for (int h = 0; h < w.f.n_planes(); ++h) {
    uint64_t word;
    std::memcpy(&word, q + 256 + 64 * h + 8 * (k / 4), 8);
    u |= static_cast<int>((word >> (4 * r + j)) & 1) << (4 + h);
  }
  return u;
}

}  // namespace g3e::qk
