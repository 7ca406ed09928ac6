#include "vision.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "errors.h"
#include "kernels/vec.h"
#include "log.h"

namespace g3e {

namespace {

// Limits far above SigLIP's sizes; they keep a crafted file from asking for absurd
// allocations before any tensor is checked.
constexpr int64_t kMaxImageSize = 1 << 13;
constexpr int64_t kMaxWidth = 1 << 15;
constexpr int64_t kMaxLayers = 256;

// Rows of queries one attention task takes: a (rows, n_patches) block of scores stays in cache.
constexpr int64_t kQueryBlock = 48;

int64_t checked_size(const GGUFFile& f, const std::string& key, int64_t max_value) {
  const uint64_t v = f.get_uint(key);
  if (v == 0 || v > static_cast<uint64_t>(max_value)) {
    throw ModelLoadError(f.where() + "metadata key '" + key + "' is " + std::to_string(v) + ", expected 1 to " +
                         std::to_string(max_value));
  }
  return static_cast<int64_t>(v);
}

std::vector<float> read_tensor(const GGUFFile& f, const std::string& name, const std::vector<int64_t>& shape) {
  const GGUFTensorInfo& t = f.require_tensor(name, shape);
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
  if (!info || !info->can_dequantize) {
    throw ModelLoadError(f.where() + "tensor '" + name + "' has type " + (info ? info->name : "unknown") +
                         ", which this runtime cannot run");
  }
  std::vector<float> out(static_cast<size_t>(t.n_elements));
  dequantize_row(t.type, t.data, out.data(), t.n_elements);
  for (float v : out) {
    if (!std::isfinite(v)) throw ModelLoadError(f.where() + "tensor '" + name + "' contains NaN or infinite values");
  }
  return out;
}

// A weight W of shape (rows = outputs, cols = inputs), stored with ne = [cols, rows].
PackedWeight read_matrix(const GGUFFile& f, const std::string& name, int64_t rows, int64_t cols,
                         const std::vector<int64_t>& shape, Precision precision) {
  const GGUFTensorInfo& t = f.require_tensor(name, shape);
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
  if (!info || !info->can_dequantize) {
    throw ModelLoadError(f.where() + "tensor '" + name + "' has type " + (info ? info->name : "unknown") +
                         ", which this runtime cannot run");
  }
  try {
    return pack_weight(t.type, t.data, rows, cols,
                       precision == Precision::kF32 ? PackMode::kF32 : PackMode::kQuantized);
  } catch (const std::invalid_argument& e) {
    throw ModelLoadError(f.where() + "tensor '" + name + "': " + e.what());
  }
}

VisionActivation read_activation(const GGUFFile& f) {
  // gemma3_edge.vision.hidden_act keeps transformers' name; llama.cpp's files have only
  // clip.use_gelu, which selects ggml_gelu (the tanh approximation).
  const std::string key = "gemma3_edge.vision.hidden_act";
  if (f.has(key)) {
    const std::string name = f.get_string(key);
    if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_fast") return VisionActivation::kGeluTanh;
    if (name == "gelu") return VisionActivation::kGeluErf;
    throw ModelLoadError(f.where() + key + " is '" + name +
                         "'; supported activations are 'gelu_pytorch_tanh' and 'gelu'");
  }
  if (f.get_bool_or("clip.use_silu", false)) {
    throw ModelLoadError(f.where() + "clip.use_silu is set, but SigLIP in Gemma 3 uses GELU; this is not a "
                                     "Gemma 3 vision projector");
  }
  return VisionActivation::kGeluTanh;
}

VisionConfig read_vision_config(const GGUFFile& f) {
  const std::string architecture = f.get_string("general.architecture");
  if (architecture != "clip") {
    throw ModelLoadError(f.where() + "general.architecture is '" + architecture +
                         "', expected 'clip' (a llama.cpp vision projector file, often named mmproj-*.gguf)");
  }
  if (!f.get_bool_or("clip.has_vision_encoder", false)) {
    throw ModelLoadError(f.where() + "clip.has_vision_encoder is not set, so the file contains no vision encoder");
  }
  const std::string type_key = f.has("clip.vision.projector_type") ? "clip.vision.projector_type" : "clip.projector_type";
  const std::string projector = f.get_string(type_key);
  if (projector != "gemma3") {
    throw ModelLoadError(f.where() + type_key + " is '" + projector +
                         "'; this runtime runs Gemma 3 vision projectors ('gemma3') only");
  }

  VisionConfig c;
  c.image_size = checked_size(f, "clip.vision.image_size", kMaxImageSize);
  c.patch_size = checked_size(f, "clip.vision.patch_size", kMaxImageSize);
  c.width = checked_size(f, "clip.vision.embedding_length", kMaxWidth);
  c.d_ff = checked_size(f, "clip.vision.feed_forward_length", kMaxWidth * 8);
  c.n_layers = checked_size(f, "clip.vision.block_count", kMaxLayers);
  c.n_heads = checked_size(f, "clip.vision.attention.head_count", 1024);
  c.projection_dim = checked_size(f, "clip.vision.projection_dim", 1 << 17);
  c.norm_eps = static_cast<float>(f.get_float_or("clip.vision.attention.layer_norm_epsilon", 1e-6));
  if (!(c.norm_eps > 0.0f && c.norm_eps < 1.0f)) {
    throw ModelLoadError(f.where() + "clip.vision.attention.layer_norm_epsilon must be in (0, 1)");
  }
  if (c.image_size % c.patch_size != 0) {
    throw ModelLoadError(f.where() + "clip.vision.image_size " + std::to_string(c.image_size) +
                         " is not a multiple of clip.vision.patch_size " + std::to_string(c.patch_size));
  }
  if (c.width % c.n_heads != 0) {
    throw ModelLoadError(f.where() + "clip.vision.embedding_length " + std::to_string(c.width) +
                         " is not a multiple of the head count " + std::to_string(c.n_heads));
  }
  c.patches_per_side = c.image_size / c.patch_size;
  c.n_patches = c.patches_per_side * c.patches_per_side;
  c.head_dim = c.width / c.n_heads;
  // llama.cpp writes the pooling window only when it differs from Gemma 3's 4 (896 / 14 = 64
  // patches per side pooled to 16 x 16 = 256 tokens).
  c.pool_kernel = static_cast<int64_t>(f.get_uint_or("clip.vision.projector.scale_factor", 4));
  if (c.pool_kernel < 1 || c.patches_per_side % c.pool_kernel != 0) {
    throw ModelLoadError(f.where() + "the pooling window " + std::to_string(c.pool_kernel) +
                         " (clip.vision.projector.scale_factor) does not divide the " +
                         std::to_string(c.patches_per_side) + " patches per side");
  }
  c.tokens_per_side = c.patches_per_side / c.pool_kernel;
  c.n_tokens = c.tokens_per_side * c.tokens_per_side;

  for (const char* key : {"clip.vision.image_mean", "clip.vision.image_std"}) {
    if (!f.has(key)) continue;
    std::vector<float> values = f.get_float_array(key);
    if (values.size() != 3) {
      throw ModelLoadError(f.where() + key + " has " + std::to_string(values.size()) + " values, expected 3 (RGB)");
    }
    std::array<float, 3>& target = std::string(key) == "clip.vision.image_mean" ? c.image_mean : c.image_std;
    std::copy(values.begin(), values.end(), target.begin());
  }
  for (float s : c.image_std) {
    if (!(s > 0.0f)) throw ModelLoadError(f.where() + "clip.vision.image_std must be positive");
  }
  c.activation = read_activation(f);
  return c;
}

void add_bias(float* y, const float* bias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * cols;
    for (int64_t i = 0; i < cols; ++i) row[i] += bias[i];
  }
}

// Runs fn(begin, end) over [0, rows) split into one contiguous range per thread.
template <typename Fn>
void parallel_rows(ThreadPool& pool, int64_t rows, const Fn& fn) {
  pool.run([&](int thread, int n_threads) {
    const int64_t begin = rows * thread / n_threads;
    const int64_t end = rows * (thread + 1) / n_threads;
    if (begin < end) fn(begin, end);
  });
}

// y = x W^T + b for rows of x.
void linear(const PackedWeight& w, const std::vector<float>& bias, const float* x, int64_t rows, float* y,
            ThreadPool& pool) {
  matmul(w, x, rows, y, pool);
  parallel_rows(pool, rows, [&](int64_t begin, int64_t end) {
    add_bias(y + begin * w.rows(), bias.data(), end - begin, w.rows());
  });
}

// LayerNorm over each row of x (rows, n) with mean and variance accumulated in double.
void layer_norm(const float* x, const std::vector<float>& weight, const std::vector<float>& bias, float* out,
                int64_t rows, int64_t n, float eps, ThreadPool& pool) {
  parallel_rows(pool, rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * n;
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) sum += xr[i];
      const double mean = sum / static_cast<double>(n);
      double squares = 0.0;
      for (int64_t i = 0; i < n; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
      const double inv_std = 1.0 / std::sqrt(squares / static_cast<double>(n) + static_cast<double>(eps));
      float* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        o[i] = static_cast<float>((xr[i] - mean) * inv_std) * weight[i] + bias[i];
      }
    }
  });
}

void gelu(float* x, int64_t rows, int64_t n, VisionActivation activation, ThreadPool& pool) {
  const VecOps& vec = vec_ops();
  parallel_rows(pool, rows, [&](int64_t begin, int64_t end) {
    if (activation == VisionActivation::kGeluErf) {
      for (int64_t i = begin * n; i < end * n; ++i) {
        x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
      }
      return;
    }
    const std::vector<float> ones(static_cast<size_t>(n), 1.0f);
    for (int64_t r = begin; r < end; ++r) vec.gelu_tanh_mul(x + r * n, ones.data(), n);
  });
}

}  // namespace

VisionModel::VisionModel(const std::string& path, Precision precision)
    : file_(std::make_unique<GGUFFile>(path)), precision_(precision) {
  const GGUFFile& f = *file_;
  config_ = read_vision_config(f);
  const VisionConfig& c = config_;
  const int64_t w = c.width;
  auto vector = [&](const std::string& name, int64_t n) { return read_tensor(f, name, {n}); };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    return read_matrix(f, name, rows, cols, {cols, rows}, precision);
  };

  const int64_t p = c.patch_size;
  patch_embedding_ = read_matrix(f, "v.patch_embd.weight", w, 3 * p * p, {p, p, 3, w}, precision);
  patch_bias_ = vector("v.patch_embd.bias", w);
  position_embedding_ = read_tensor(f, "v.position_embd.weight", {w, c.n_patches});

  layers_.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string b = "v.blk." + std::to_string(i) + ".";
    VisionLayerWeights& l = layers_[i];
    l.ln1_weight = vector(b + "ln1.weight", w);
    l.ln1_bias = vector(b + "ln1.bias", w);
    l.ln2_weight = vector(b + "ln2.weight", w);
    l.ln2_bias = vector(b + "ln2.bias", w);
    l.wq = matrix(b + "attn_q.weight", w, w);
    l.wk = matrix(b + "attn_k.weight", w, w);
    l.wv = matrix(b + "attn_v.weight", w, w);
    l.wo = matrix(b + "attn_out.weight", w, w);
    l.bq = vector(b + "attn_q.bias", w);
    l.bk = vector(b + "attn_k.bias", w);
    l.bv = vector(b + "attn_v.bias", w);
    l.bo = vector(b + "attn_out.bias", w);
    l.up = matrix(b + "ffn_up.weight", c.d_ff, w);
    l.up_bias = vector(b + "ffn_up.bias", c.d_ff);
    l.down = matrix(b + "ffn_down.weight", w, c.d_ff);
    l.down_bias = vector(b + "ffn_down.bias", w);
  }
  post_norm_weight_ = vector("v.post_ln.weight", w);
  post_norm_bias_ = vector("v.post_ln.bias", w);
  soft_norm_weight_ = vector("mm.soft_emb_norm.weight", w);

  // transformers multiplies by mm_input_projection_weight (width, projection_dim) from the
  // right, and llama.cpp stores that matrix as it is (ne = [projection_dim, width]); the
  // kernels want (outputs, inputs), so it is transposed here and kept in float32.
  std::vector<float> stored = read_tensor(f, "mm.input_projection.weight", {c.projection_dim, w});
  std::vector<float> transposed(stored.size());
  for (int64_t r = 0; r < w; ++r) {
    for (int64_t col = 0; col < c.projection_dim; ++col) transposed[col * w + r] = stored[r * c.projection_dim + col];
  }
  projection_ = pack_weight(GGMLType::F32, transposed.data(), c.projection_dim, w, PackMode::kF32);

  log(LogLevel::kInfo, "loaded Gemma 3 vision tower (" + std::to_string(c.n_layers) + " layers, width " +
                           std::to_string(w) + ", " + std::to_string(c.image_size) + " px, " +
                           std::to_string(c.n_tokens) + " tokens per image) from " + path + " as " +
                           (precision == Precision::kF32 ? "f32 (reference path)" : "quantized"));
  for (const std::string& line : layout_summary()) log(LogLevel::kInfo, "vision weights: " + line);
}

int64_t VisionModel::weight_bytes() const {
  int64_t total = patch_embedding_.bytes() + projection_.bytes();
  for (const VisionLayerWeights& l : layers_) {
    total += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.up.bytes() + l.down.bytes();
  }
  return total;
}

std::vector<std::string> VisionModel::layout_summary() const {
  std::map<std::string, int> counts;
  counts[patch_embedding_.layout()]++;
  counts[projection_.layout()]++;
  for (const VisionLayerWeights& l : layers_) {
    for (const PackedWeight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.up, &l.down}) counts[w->layout()]++;
  }
  std::vector<std::string> lines;
  for (const auto& [layout, n] : counts) lines.push_back(layout + ": " + std::to_string(n) + " tensors");
  return lines;
}

void VisionModel::encode(const float* pixels, float* out, ThreadPool& pool, float* tower_out) const {
  const VisionConfig& c = config_;
  const int64_t n = c.n_patches;
  const int64_t w = c.width;
  const int64_t p = c.patch_size;
  const int64_t side = c.patches_per_side;
  const int64_t patch_dim = 3 * p * p;

  // Patches as rows (n_patches, 3 * p * p), patch index y * side + x, columns (channel, y, x):
  // the order of the Conv2d weight and of transformers' flatten(2) over the output grid.
  std::vector<float> patches(static_cast<size_t>(n * patch_dim));
  for (int64_t py = 0; py < side; ++py) {
    for (int64_t px = 0; px < side; ++px) {
      float* row = &patches[(py * side + px) * patch_dim];
      for (int64_t ch = 0; ch < 3; ++ch) {
        for (int64_t ky = 0; ky < p; ++ky) {
          const float* src = pixels + (ch * c.image_size + py * p + ky) * c.image_size + px * p;
          std::copy(src, src + p, row + (ch * p + ky) * p);
        }
      }
    }
  }
  std::vector<float> hidden(static_cast<size_t>(n * w));
  linear(patch_embedding_, patch_bias_, patches.data(), n, hidden.data(), pool);
  patches = std::vector<float>();
  parallel_rows(pool, n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * w; i < end * w; ++i) hidden[i] += position_embedding_[i];
  });

  std::vector<float> normed(hidden.size()), q(hidden.size()), k(hidden.size()), v(hidden.size());
  std::vector<float> attended(hidden.size()), projected(hidden.size());
  std::vector<float> mlp(static_cast<size_t>(n * c.d_ff));
  AttentionScratch scratch = make_attention_scratch();
  for (const VisionLayerWeights& l : layers_) {
    // Pre-norm attention block with a residual connection.
    layer_norm(hidden.data(), l.ln1_weight, l.ln1_bias, normed.data(), n, w, c.norm_eps, pool);
    linear(l.wq, l.bq, normed.data(), n, q.data(), pool);
    linear(l.wk, l.bk, normed.data(), n, k.data(), pool);
    linear(l.wv, l.bv, normed.data(), n, v.data(), pool);
    attention(q.data(), k.data(), v.data(), attended.data(), scratch, pool);
    linear(l.wo, l.bo, attended.data(), n, projected.data(), pool);
    parallel_rows(pool, n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin * w; i < end * w; ++i) hidden[i] += projected[i];
    });

    // Pre-norm MLP block (fc1, GELU, fc2) with a residual connection.
    layer_norm(hidden.data(), l.ln2_weight, l.ln2_bias, normed.data(), n, w, c.norm_eps, pool);
    linear(l.up, l.up_bias, normed.data(), n, mlp.data(), pool);
    gelu(mlp.data(), n, c.d_ff, c.activation, pool);
    linear(l.down, l.down_bias, mlp.data(), n, projected.data(), pool);
    parallel_rows(pool, n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin * w; i < end * w; ++i) hidden[i] += projected[i];
    });
  }
  layer_norm(hidden.data(), post_norm_weight_, post_norm_bias_, normed.data(), n, w, c.norm_eps, pool);
  if (tower_out) std::copy(normed.begin(), normed.end(), tower_out);

  // Average pooling over kernel x kernel patches: token ty * tokens_per_side + tx, as
  // transformers' AvgPool2d over the (width, side, side) grid followed by flatten(2).
  const int64_t kernel = c.pool_kernel;
  const int64_t tokens = c.n_tokens;
  std::vector<float> pooled(static_cast<size_t>(tokens * w), 0.0f);
  const float inv_area = 1.0f / static_cast<float>(kernel * kernel);
  for (int64_t ty = 0; ty < c.tokens_per_side; ++ty) {
    for (int64_t tx = 0; tx < c.tokens_per_side; ++tx) {
      float* token = &pooled[(ty * c.tokens_per_side + tx) * w];
      for (int64_t ky = 0; ky < kernel; ++ky) {
        for (int64_t kx = 0; kx < kernel; ++kx) {
          const float* patch = &normed[((ty * kernel + ky) * side + tx * kernel + kx) * w];
          for (int64_t i = 0; i < w; ++i) token[i] += patch[i];
        }
      }
      for (int64_t i = 0; i < w; ++i) token[i] *= inv_area;
    }
  }

  // Soft-token RMSNorm (Gemma's 1 + w folded into the weight), then the projection.
  const VecOps& vec = vec_ops();
  for (int64_t t = 0; t < tokens; ++t) {
    vec.rms_norm(&pooled[t * w], soft_norm_weight_.data(), &pooled[t * w], w, c.norm_eps);
  }
  matmul(projection_, pooled.data(), tokens, out, pool);
}

VisionModel::AttentionScratch VisionModel::make_attention_scratch() const {
  const VisionConfig& c = config_;
  AttentionScratch scratch;
  // Zero-filled once: packing writes the same positions in every layer, so the padding
  // columns of the last panel of each head stay zero.
  scratch.keys.assign(static_cast<size_t>(c.n_heads * sgemm_panel_count(c.n_patches) * kSgemmPanel * c.head_dim),
                      0.0f);
  scratch.values.assign(static_cast<size_t>(c.n_heads * sgemm_panel_count(c.head_dim) * kSgemmPanel * c.n_patches),
                        0.0f);
  scratch.queries.resize(static_cast<size_t>(c.n_patches * c.width));
  return scratch;
}

// Full (bidirectional) multi-head attention over all patches: out = softmax(q k^T / sqrt(d)) v
// per head, with q, k, v and out laid out (n_patches, width) and head h in columns
// h * head_dim .. (h + 1) * head_dim - 1.
void VisionModel::attention(const float* q, const float* k, const float* v, float* out, AttentionScratch& scratch,
                            ThreadPool& pool) const {
  const VisionConfig& c = config_;
  const int64_t n = c.n_patches;
  const int64_t w = c.width;
  const int64_t hd = c.head_dim;
  const VecOps& vec = vec_ops();

  // Per head: keys as sgemm panels of the (n, hd) matrix K_h, and values as panels of the
  // (hd, n) matrix V_h^T, so that scores = Q_h K_h^T and out_h = P V_h are both sgemm calls.
  const int64_t key_panels = sgemm_panel_count(n);
  const int64_t value_panels = sgemm_panel_count(hd);
  const int64_t key_stride = key_panels * kSgemmPanel * hd;
  const int64_t value_stride = value_panels * kSgemmPanel * n;
  float* keys = scratch.keys.data();
  float* values = scratch.values.data();
  float* queries = scratch.queries.data();  // (head, patch, hd), scaled
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  pool.run([&](int thread, int n_threads) {
    std::vector<float> column(static_cast<size_t>(n));
    for (int64_t h = thread; h < c.n_heads; h += n_threads) {
      float* key_panel = keys + h * key_stride;
      float* value_panel = values + h * value_stride;
      for (int64_t i = 0; i < n; ++i) {
        sgemm_pack_row(k + i * w + h * hd, i, hd, key_panel);
        const float* qi = q + i * w + h * hd;
        float* qo = queries + (h * n + i) * hd;
        for (int64_t d = 0; d < hd; ++d) qo[d] = qi[d] * scale;
      }
      for (int64_t d = 0; d < hd; ++d) {
        for (int64_t i = 0; i < n; ++i) column[i] = v[i * w + h * hd + d];
        sgemm_pack_row(column.data(), d, n, value_panel);
      }
    }
  });

  const int64_t blocks_per_head = (n + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_tasks = c.n_heads * blocks_per_head;
  pool.run([&](int thread, int n_threads) {
    std::vector<float> scores(static_cast<size_t>(kQueryBlock * n));
    for (int64_t task = thread; task < n_tasks; task += n_threads) {
      const int64_t h = task / blocks_per_head;
      const int64_t row0 = (task % blocks_per_head) * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, n - row0);
      vec.sgemm(keys + h * key_stride, n, hd, queries + (h * n + row0) * hd, rows, 0, key_panels, scores.data(), n);
      for (int64_t r = 0; r < rows; ++r) {
        float* s = &scores[r * n];
        const float max_score = vec.max(s, n);
        const float sum = vec.exp_shifted(s, n, max_score);
        vec.scale(1.0f / sum, s, n);
      }
      vec.sgemm(values + h * value_stride, hd, n, scores.data(), rows, 0, value_panels, out + row0 * w + h * hd, w);
    }
  });
}

}  // namespace g3e
