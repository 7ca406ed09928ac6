// Repacking GGUF integer types into the qblock layout (qformat.h) and back. Internal.
#pragma once

#include <cstdlib>
#include <functional>
#include <memory>

#include "kernels/ggml_types.h"
#include "kernels/qformat.h"

namespace g3e::qk {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A packed matrix that owns its (64-byte aligned) storage.
struct QMatrix {
  QPanel panel;
  std::unique_ptr<uint8_t[], FreeDeleter> storage;
};

// True for the GGUF types the qblock layout represents exactly.
bool qblock_supports(GGMLType type);

// Repacks rows x cols elements of `type` (GGUF row-major) without loss. Calls progress, when
// set, with the number of leading rows packed so far: every few MB of source and once at the end.
QMatrix qblock_pack(GGMLType type, const void* data, int64_t rows, int64_t cols,
                    const std::function<void(int64_t rows_done)>& progress = nullptr);

// Row n of the packed matrix as float32, bit-identical to dequantize_row on the source.
void qblock_dequantize_row(const QPanel& p, int64_t n, float* out);

}  // namespace g3e::qk
