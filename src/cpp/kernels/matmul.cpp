// Weight packing and the matmul entry points: float weights or qblock weights (qformat.h),
// activation quantization, and the split of work over the thread pool.
#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/qformat.h"
#include "kernels/qpack.h"
#include "kernels/vec.h"
#include "threadpool.h"

namespace g3e {

struct PackedWeight::Impl {
  enum class Kind { kFloat, kQBlock };
  Kind kind = Kind::kFloat;
  int64_t rows = 0;
  int64_t cols = 0;
  GGMLType type = GGMLType::F32;  // type of the source tensor
  std::string layout;
  std::vector<float> f32;         // kFloat: (rows, cols)
  qk::QMatrix q;                  // kQBlock
};

PackedWeight::PackedWeight() = default;
PackedWeight::~PackedWeight() = default;
PackedWeight::PackedWeight(PackedWeight&&) noexcept = default;
PackedWeight& PackedWeight::operator=(PackedWeight&&) noexcept = default;

int64_t PackedWeight::rows() const { return impl ? impl->rows : 0; }
int64_t PackedWeight::cols() const { return impl ? impl->cols : 0; }
std::string PackedWeight::layout() const { return impl ? impl->layout : "empty"; }

int64_t PackedWeight::bytes() const {
  if (!impl) return 0;
  if (impl->kind == Impl::Kind::kFloat) return impl->rows * impl->cols * static_cast<int64_t>(sizeof(float));
  return impl->q.panel.n_tiles * impl->q.panel.tile_stride;
}

void PackedWeight::dequantize_row(int64_t r, float* out) const {
  if (!impl || r < 0 || r >= impl->rows) throw std::out_of_range("PackedWeight::dequantize_row: bad row");
  if (impl->kind == Impl::Kind::kFloat) {
    sgemm_unpack_row(impl->f32.data(), r, impl->cols, out);
  } else {
    qk::qblock_dequantize_row(impl->q.panel, r, out);
  }
}

namespace {

std::string describe(const qk::QFormat& f, const char* source) {
  std::string s = "i" + std::to_string(f.bits) + "b" + std::to_string(f.sub);
  s += f.scale_f16 ? " f16-scale" : " f32-scale";
  if (f.has_min) s += "+min";
  if (f.zp != 0) s += " zp" + std::to_string(f.zp);
  return s + ", 16-row tiles (repacked from " + source + ")";
}

}  // namespace

PackedWeight pack_weight(GGMLType type, const void* data, int64_t rows, int64_t cols, PackMode mode,
                         const PackProgress& progress) {
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(type));
  if (info == nullptr || !info->can_dequantize) {
    throw std::invalid_argument("pack_weight: unsupported ggml type id " +
                                std::to_string(static_cast<uint32_t>(type)));
  }
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("pack_weight: empty matrix");
  if (cols % info->block_size != 0) {
    throw std::invalid_argument(std::string("pack_weight: ") + std::to_string(cols) +
                                " columns is not a multiple of the " + info->name + " block size " +
                                std::to_string(info->block_size));
  }
  PackedWeight w;
  w.impl = std::make_unique<PackedWeight::Impl>();
  auto& p = *w.impl;
  p.rows = rows;
  p.cols = cols;
  p.type = type;
  if (mode == PackMode::kQuantized && qk::qblock_supports(type)) {
    p.kind = PackedWeight::Impl::Kind::kQBlock;
    p.q = qk::qblock_pack(type, data, rows, cols, progress);
    p.layout = describe(p.q.panel.f, info->name);
    return w;
  }
  // Float weights (and the kF32 reference mode): float32 rows, converted without loss.
  p.kind = PackedWeight::Impl::Kind::kFloat;
  const int64_t row_bytes = ggml_row_bytes(type, cols);
  const uint8_t* src = static_cast<const uint8_t*>(data);
  // Stored in sgemm panels (vec.h) so the float GEMM streams each weight once per row block.
  p.f32.assign(static_cast<size_t>(sgemm_panel_count(rows) * kSgemmPanel * cols), 0.0f);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    g3e::dequantize_row(type, src + r * row_bytes, row.data(), cols);
    sgemm_pack_row(row.data(), r, cols, p.f32.data());
  }
  if (progress) progress(rows);
  if (type == GGMLType::F32) {
    p.layout = "f32";
  } else {
    p.layout = std::string("f32 (") + (mode == PackMode::kF32 ? "dequantized" : "converted") + " from " +
               info->name + ")";
  }
  return w;
}

namespace {

// Activation scratch of the calling thread, reused across calls (64-byte aligned).
void* acts_scratch(int64_t bytes) {
  struct Buf {
    void* p = nullptr;
    int64_t size = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.size < bytes) {
    std::free(buf.p);
    buf.size = (bytes + 63) / 64 * 64;
    buf.p = std::aligned_alloc(64, static_cast<size_t>(buf.size));
    if (buf.p == nullptr) {
      buf.size = 0;
      throw std::bad_alloc();
    }
  }
  return buf.p;
}

// Activation quantization runs on the pool only when it is big enough to pay for a handoff.
constexpr int64_t kParallelQuantizeElems = 1 << 15;
// Smallest GEMV work item in 16-row tiles: a few KB of weights, so that the software prefetch
// of a chunk mostly lands in the same chunk.
constexpr int64_t kMinGemvTiles = 4;

}  // namespace

void matmul_multi(const PackedWeight* const* ws, float* const* ys, int count, const float* x, int64_t m,
                  ThreadPool& pool) {
  if (count <= 0 || m <= 0) return;
  const int64_t k = ws[0]->cols();
  bool any_q = false;
  for (int j = 0; j < count; ++j) {
    if (!ws[j] || !ws[j]->impl) throw std::invalid_argument("matmul: empty weight");
    if (ws[j]->cols() != k) throw std::invalid_argument("matmul_multi: weights differ in cols");
    any_q |= ws[j]->impl->kind == PackedWeight::Impl::Kind::kQBlock;
  }
  const qk::IsaKernels& kern = qk::active_kernels();

  qk::QActs acts;
  if (any_q) {
    acts = qk::acts_view(acts_scratch(qk::acts_scratch_bytes(m, k)), m, k);
    if (m * k >= kParallelQuantizeElems && pool.size() > 1) {
      const int64_t rows_per_item = std::max<int64_t>(1, m / (4 * pool.size()));
      std::atomic<int64_t> next_row{0};
      pool.run_dynamic([&](int, int) {
        for (int64_t r0; (r0 = next_row.fetch_add(rows_per_item, std::memory_order_relaxed)) < m;) {
          kern.quantize_acts(x, acts, r0, std::min(m, r0 + rows_per_item));
        }
      });
    } else {
      kern.quantize_acts(x, acts, 0, m);
    }
  }

  // Work items are chunks of tiles (qblock) or panels (float), handed out through one atomic
  // counter (with run_dynamic), so a thread that the OS delays does not hold up the others:
  // whoever is running takes the next chunk. Chunks aim at ~8 per thread and never split a tile
  // or panel.
  constexpr int kMaxWeights = 8;
  if (count > kMaxWeights) throw std::invalid_argument("matmul_multi: at most 8 weights per call");
  int64_t units[kMaxWeights], chunk[kMaxWeights], first_item[kMaxWeights + 1];
  first_item[0] = 0;
  for (int j = 0; j < count; ++j) {
    const auto& p = *ws[j]->impl;
    units[j] = p.kind == PackedWeight::Impl::Kind::kQBlock ? p.q.panel.n_tiles : sgemm_panel_count(p.rows);
    const int64_t min_chunk = m == 1 ? kMinGemvTiles : 2;
    // Even chunks, so the GEMM's 2-tile register blocks never fall back to single tiles.
    chunk[j] = (std::max(min_chunk, units[j] / (8 * pool.size())) + 1) / 2 * 2;
    first_item[j + 1] = first_item[j] + (units[j] + chunk[j] - 1) / chunk[j];
  }
  std::atomic<int64_t> next{0};
  pool.run_dynamic([&](int, int) {
    for (int64_t item; (item = next.fetch_add(1, std::memory_order_relaxed)) < first_item[count];) {
      int j = 0;
      while (item >= first_item[j + 1]) ++j;
      const auto& p = *ws[j]->impl;
      const int64_t u0 = (item - first_item[j]) * chunk[j], u1 = std::min(units[j], u0 + chunk[j]);
      if (p.kind == PackedWeight::Impl::Kind::kQBlock) {
        kern.qgemm(p.q.panel, acts, u0, u1, ys[j], p.rows);
      } else {
        vec_ops().sgemm(p.f32.data(), p.rows, k, x, m, u0, u1, ys[j], p.rows);
      }
    }
  });
}

void matmul(const PackedWeight& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  const PackedWeight* ws[1] = {&w};
  float* ys[1] = {y};
  matmul_multi(ws, ys, 1, x, m, pool);
}

}  // namespace g3e
