// Weight packing and matmul dispatch. First version: f32 weights or raw GGUF blocks with a
// scalar dequantize-and-dot path.
#include "kernels/matmul.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "threadpool.h"

namespace g3e {

struct PackedWeight::Impl {
  enum class Kind { kF32, kRaw };
  Kind kind = Kind::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  GGMLType type = GGMLType::F32;  // type of the source tensor
  std::string layout;
  std::vector<float> f32;         // kF32: [rows, cols]
  const uint8_t* raw = nullptr;   // kRaw: [rows, row_bytes], caller's memory
  int64_t row_bytes = 0;
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
  if (impl->kind == Impl::Kind::kF32) return impl->rows * impl->cols * static_cast<int64_t>(sizeof(float));
  return impl->rows * impl->row_bytes;
}

void PackedWeight::dequantize_row(int64_t r, float* out) const {
  if (!impl || r < 0 || r >= impl->rows) throw std::out_of_range("PackedWeight::dequantize_row: bad row");
  if (impl->kind == Impl::Kind::kF32) {
    std::memcpy(out, impl->f32.data() + r * impl->cols, impl->cols * sizeof(float));
  } else {
    g3e::dequantize_row(impl->type, impl->raw + r * impl->row_bytes, out, impl->cols);
  }
}

PackedWeight pack_weight(GGMLType type, const void* data, int64_t rows, int64_t cols, PackMode mode) {
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
  p.row_bytes = ggml_row_bytes(type, cols);
  const uint8_t* src = static_cast<const uint8_t*>(data);
  if (mode == PackMode::kF32) {
    p.kind = PackedWeight::Impl::Kind::kF32;
    p.f32.resize(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) g3e::dequantize_row(type, src + r * p.row_bytes, &p.f32[r * cols], cols);
    p.layout = std::string("f32 (dequantized from ") + info->name + ")";
  } else {
    p.kind = PackedWeight::Impl::Kind::kRaw;
    p.raw = src;
    p.layout = std::string(info->name) + " (mapped, scalar)";
  }
  return w;
}

namespace {

float dot_f32(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void matmul(const PackedWeight& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  if (!w.impl) throw std::invalid_argument("matmul: empty weight");
  const auto& p = *w.impl;
  const int64_t n = p.rows, k = p.cols;
  pool.run([&](int t, int nt) {
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t r0 = std::min<int64_t>(n, chunk * t), r1 = std::min<int64_t>(n, r0 + chunk);
    std::vector<float> row;
    if (p.kind == PackedWeight::Impl::Kind::kRaw) row.resize(static_cast<size_t>(k));
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr;
      if (p.kind == PackedWeight::Impl::Kind::kF32) {
        wr = p.f32.data() + r * k;
      } else {
        g3e::dequantize_row(p.type, p.raw + r * p.row_bytes, row.data(), k);
        wr = row.data();
      }
      for (int64_t i = 0; i < m; ++i) y[i * n + r] = dot_f32(x + i * k, wr, k);
    }
  });
}

const char* active_isa() { return "scalar"; }

}  // namespace g3e
