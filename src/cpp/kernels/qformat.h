// The runtime's quantized weight layout ("qblock") and the kernel interface every ISA implements.
// Internal to the kernels.
//
// Every integer GGUF type is repacked at load, without loss, into one layout:
//
//   w[n, k] = s[n, sub(k)] * (u[n, k] - zp) + c[n, sub(k)]
//
//   u   unsigned integer of `bits` bits (4, 5, 6 or 8); zp a zero point constant for the matrix.
//   s   scale per row and sub-block of 16 or 32 elements along k (f16 when the source stores f16,
//       else f32 holding exactly the product ggml computes, e.g. d * sc for Q4_K).
//   c   optional min per row and sub-block (f32), e.g. -dmin * m for Q4_K.
//
// Rows are grouped in tiles of 16 (kTileRows) and k in blocks of 32 (kBlockK). Per tile, memory
// holds one contiguous, 64-byte aligned record:
//   [n_kb x quant block] [n_kb x scales] [n_kb x mins] (padded to 64 bytes)
// quant block (bits = 8): 8 vectors of 64 bytes; vector g, byte 4*r + j = u[row r, k = 4g + j].
// quant block (bits < 8): 4 vectors of 64 bytes of nibbles; vector p, byte 4*r + j holds
//   u[r, 8p + j] & 15 in its low nibble and u[r, 8p + 4 + j] & 15 in its high nibble; then for
//   bits 5 and 6, one or two planes of 8 x uint64: plane h, word g, bit 4*r + j = bit (4 + h)
//   of u[r, 4g + j].
// scales: [n_sub][16 rows] (n_sub = 32 / sub), f16 or f32; mins: [n_sub][16 rows] f32.
// One 64-byte vector is exactly what a VNNI instruction multiplies against a broadcast group of
// 4 activations, giving 16 row sums at once. So GEMV needs no horizontal reductions, and GEMM
// reuses the same panel. The int8 activations are per block of 32 (like ggml's Q8_0), and the
// exact sums of u * xq are corrected for zp by starting the integer accumulator at -zp * sum(xq).
// NOTE: no GGUF type has this layout, so every quantized weight is copied once at load (Q8_0
// keeps its size, 8.5 bits per weight), and the file's pages are not used after packing.
#pragma once

#include <cstdint>

namespace g3e::qk {

constexpr int kTileRows = 16;
constexpr int kBlockK = 32;

struct QFormat {
  int bits = 8;          // 4, 5, 6 or 8 (storage; the values may use fewer, e.g. Q2_K in 4)
  int sub = 32;          // elements per scale: 16 or 32
  bool scale_f16 = true; // scales stored as f16 (else f32)
  bool has_min = false;  // mins stored (f32)
  int zp = 0;            // zero point subtracted from u

  int n_sub() const { return kBlockK / sub; }
  int n_planes() const { return bits == 5 ? 1 : bits == 6 ? 2 : 0; }
  int64_t quant_bytes() const {  // per (tile, block)
    return bits == 8 ? 512 : 256 + 64 * n_planes();
  }
  int64_t scale_bytes() const { return static_cast<int64_t>(n_sub()) * kTileRows * (scale_f16 ? 2 : 4); }
  int64_t min_bytes() const { return has_min ? static_cast<int64_t>(n_sub()) * kTileRows * 4 : 0; }
};

// Read-only view of a packed matrix.
struct QPanel {
  QFormat f;
  int64_t rows = 0;         // valid rows (N); in a partial last tile, padding rows have scale 0
  int64_t cols = 0;         // K, a multiple of kBlockK
  int64_t n_tiles = 0;
  int64_t n_kb = 0;         // cols / kBlockK
  int64_t tile_stride = 0;  // bytes per tile record
  const uint8_t* data = nullptr;

  const uint8_t* tile(int64_t t) const { return data + t * tile_stride; }
  const uint8_t* quants(int64_t t, int64_t b) const { return tile(t) + b * f.quant_bytes(); }
  const void* scales(int64_t t, int64_t b) const {
    return tile(t) + n_kb * f.quant_bytes() + b * f.scale_bytes();
  }
  const float* mins(int64_t t, int64_t b) const {
    return reinterpret_cast<const float*>(tile(t) + n_kb * (f.quant_bytes() + f.scale_bytes()) + b * f.min_bytes());
  }
};

// Activations quantized to int8 per block of 32, once per matmul and shared by all rows of W.
struct QActs {
  int64_t m = 0;
  int64_t cols = 0;
  int64_t n_kb = 0;
  const int8_t* xq = nullptr;      // (m, cols)   round(x / xs), |xq| <= 127
  const float* xs = nullptr;       // (m, n_kb)   max|x| / 127 of each block
  const int32_t* bsum = nullptr;   // (m, n_kb, 2) sum of xq over each half block of 16
};

// Bytes of activation scratch for m rows of cols (aligned parts included).
int64_t acts_scratch_bytes(int64_t m, int64_t cols);
// Lays out a QActs over `scratch` (acts_scratch_bytes long, 64-byte aligned).
QActs acts_view(void* scratch, int64_t m, int64_t cols);

// Kernel entry points, with the same signatures in every ISA.
// Quantizes rows [r0, r1) of x (m, cols) into a (a view made by acts_view).
using QuantizeActsFn = void (*)(const float* x, const QActs& a, int64_t r0, int64_t r1);
// y[i, n] for all m rows of a and the rows n of tiles [t0, t1) (clipped to w.rows);
// y has leading dimension ldy.
using QGemmFn = void (*)(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy);

struct IsaKernels {
  const char* name;
  QuantizeActsFn quantize_acts;
  QGemmFn qgemm;
};

void quantize_acts_scalar(const float* x, const QActs& a, int64_t r0, int64_t r1);
void qgemm_scalar(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy);
#if defined(__x86_64__) || defined(_M_X64)
void quantize_acts_avx2(const float* x, const QActs& a, int64_t r0, int64_t r1);
void qgemm_avx2(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy);
void quantize_acts_avx512(const float* x, const QActs& a, int64_t r0, int64_t r1);
void qgemm_avx512(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy);
#endif
#if defined(__aarch64__)
void quantize_acts_neon(const float* x, const QActs& a, int64_t r0, int64_t r1);
void qgemm_neon(const QPanel& w, const QActs& a, int64_t t0, int64_t t1, float* y, int64_t ldy);
#endif

// The kernels chosen at start-up (or by set_isa).
const IsaKernels& active_kernels();

// Unpacks u[row r of tile t, k in block b] from the layout (reference code for tests and
// dequantize_row).
int qblock_get_u(const QPanel& w, int64_t t, int64_t b, int r, int k);

}  // namespace g3e::qk
