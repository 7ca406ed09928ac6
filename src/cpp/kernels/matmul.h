// Weight packing and matrix multiplication for linear layers. Kernels know nothing about Gemma.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ggml_types.h"

namespace g3e {

class ThreadPool;

// How a GGUF tensor is prepared for inference.
enum class PackMode {
  kF32,        // dequantize to float32 (the reference path)
  kQuantized,  // keep it quantized: run natively or repack without loss into a runtime layout
};

// A weight matrix W of shape [rows, cols] (rows = output features N, cols = input features K),
// row-major as in GGUF, prepared for one of the kernels. Either owns repacked data or points into
// the caller's memory map (which must then outlive it).
class PackedWeight {
 public:
  PackedWeight();
  ~PackedWeight();
  PackedWeight(PackedWeight&&) noexcept;
  PackedWeight& operator=(PackedWeight&&) noexcept;

  int64_t rows() const;
  int64_t cols() const;
  // Human-readable layout, e.g. "f32", "q8_0 (mapped)", "i4b32+zp (repacked from q4_K)".
  std::string layout() const;
  // Bytes of weight data this matrix reads per full multiply.
  int64_t bytes() const;
  // Dequantizes row r into out[cols]: used for embedding lookups and tests.
  void dequantize_row(int64_t r, float* out) const;

  struct Impl;
  std::unique_ptr<Impl> impl;
};

// Called while a weight is packed with the number of leading source rows already copied.
// Packing never reads those rows again, so the caller may release their memory.
using PackProgress = std::function<void(int64_t rows_done)>;

// Prepares `rows` x `cols` elements of `type` stored at `data`. Throws std::invalid_argument
// on a type or shape the kernels cannot serve. Calls progress, when set, every few MB of
// source rows and once with all rows at the end.
PackedWeight pack_weight(GGMLType type, const void* data, int64_t rows, int64_t cols, PackMode mode,
                         const PackProgress& progress = nullptr);

// y[m, rows] = x[m, cols] * W^T, all float32, row-major. Work is split over the pool's threads.
// Quantized weights: x is quantized once per call to int8 per block of 32 (scale max|x| / 127,
// as ggml's Q8_0), so each output carries an error of at most sum_k |w_k| * scale(k) / 2 on top
// of float rounding. m == 1 runs a bandwidth-shaped GEMV, larger m a tiled GEMM.
void matmul(const PackedWeight& w, const float* x, int64_t m, float* y, ThreadPool& pool);

// Several weights that share one input (Q/K/V, gate/up): x is quantized once and all products
// run in one pool dispatch, which saves a thread handoff per weight in decode.
// ys[j][m, ws[j]->rows()] = x[m, cols] * ws[j]^T for j < count <= 8; all weights have the same
// cols.
void matmul_multi(const PackedWeight* const* ws, float* const* ys, int count, const float* x, int64_t m,
                  ThreadPool& pool);

// Name of the instruction set chosen at start-up ("scalar", "avx2", "avx512", "neon", ...).
// GEMMA3_EDGE_ISA may force a lower one; an ISA the CPU lacks makes the first call throw.
const char* active_isa();

// ISAs this CPU can run, lowest first (always starts with "scalar").
std::vector<std::string> available_isas();

// Switches the kernels used by later calls (tests, benchmarks). Throws std::invalid_argument
// for an ISA this CPU cannot run. Not to be called while a matmul is running.
void set_isa(const std::string& name);

}  // namespace g3e
