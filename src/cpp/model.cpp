#include "model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "errors.h"
#include "kernels/vec.h"
#include "log.h"

namespace g3e {

namespace {

std::vector<float> load_vector(const GGUFFile& f, const std::string& name, int64_t n) {
  const GGUFTensorInfo& t = f.require_tensor(name, {n});
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
  if (!info || !info->can_dequantize) {
    throw ModelLoadError(f.where() + "tensor '" + name + "' has type " + (info ? info->name : "unknown") +
                         ", which this runtime cannot read; store norm vectors as f32, f16 or bf16");
  }
  std::vector<float> out(n);
  dequantize_row(t.type, t.data, out.data(), n);
  for (float v : out) {
    if (!std::isfinite(v)) {
      throw ModelLoadError(f.where() + "tensor '" + name + "' contains NaN or infinite values");
    }
  }
  return out;
}

PackedWeight load_matrix(const GGUFFile& f, const std::string& name, int64_t rows, int64_t cols,
                         Precision precision) {
  const GGUFTensorInfo& t = f.require_tensor(name, {cols, rows});
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
  if (!info || !info->can_dequantize) {
    throw ModelLoadError(f.where() + "tensor '" + name + "' has type " +
                         (info ? info->name : "unknown") + ", which this runtime cannot run");
  }
  // Every layout the kernels use is a copy (the PackedWeight owns its data), so the file's pages
  // of a row are not needed once the row is packed. Releasing them during packing keeps the
  // mapped source and the copy from both being resident for a whole tensor (the 178 MB
  // embedding of Gemma 3 270M would otherwise add its size to the peak).
  const int64_t row_bytes = ggml_row_bytes(t.type, cols);
  const PackProgress release_packed_rows = [&f, &t, row_bytes](int64_t rows_done) {
    f.release_pages(t, 0, rows_done * row_bytes);
  };
  try {
    return pack_weight(t.type, t.data, rows, cols,
                       precision == Precision::kF32 ? PackMode::kF32 : PackMode::kQuantized,
                       release_packed_rows);
  } catch (const std::invalid_argument& e) {
    throw ModelLoadError(f.where() + "tensor '" + name + "': " + e.what());
  }
}

// Returns the free heap memory that loading left behind (the tokenizer spec's temporary
// strings, among others) to the operating system, so it does not count in resident memory.
void release_free_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

TokenizerSpec read_tokenizer_spec(const GGUFFile& f) {
  std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "llama") {
    throw ModelLoadError(f.where() + "tokenizer.ggml.model is '" + model +
                         "', expected 'llama' (SentencePiece) as Gemma 3 uses");
  }
  TokenizerSpec spec;
  auto pieces = f.get_string_array("tokenizer.ggml.tokens");
  spec.pieces.reserve(pieces.size());
  for (auto p : pieces) spec.pieces.emplace_back(p);
  spec.scores = f.get_float_array("tokenizer.ggml.scores");
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  spec.types.assign(types.begin(), types.end());
  if (spec.scores.size() != spec.pieces.size() || spec.types.size() != spec.pieces.size()) {
    throw ModelLoadError(f.where() + "tokenizer arrays disagree: " + std::to_string(spec.pieces.size()) +
                         " tokens, " + std::to_string(spec.scores.size()) + " scores, " +
                         std::to_string(spec.types.size()) + " token types");
  }
  auto id = [&](const char* key, int32_t fallback) {
    uint64_t v = f.get_uint_or(key, static_cast<uint64_t>(fallback));
    if (v >= spec.pieces.size()) {
      throw ModelLoadError(f.where() + key + " is " + std::to_string(v) + ", outside the vocabulary of " +
                           std::to_string(spec.pieces.size()) + " tokens");
    }
    return static_cast<int32_t>(v);
  };
  spec.bos_id = id("tokenizer.ggml.bos_token_id", 2);
  spec.eos_id = id("tokenizer.ggml.eos_token_id", 1);
  spec.unk_id = id("tokenizer.ggml.unknown_token_id", 3);
  spec.pad_id = id("tokenizer.ggml.padding_token_id", 0);
  return spec;
}

// NeoX-style rotation (pairs i and i + d/2), as transformers' rotate_half and llama.cpp's
// LLAMA_ROPE_TYPE_NEOX for Gemma 3.
void apply_rope(float* v, int64_t head_dim, const float* cos_row, const float* sin_row) {
  int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    float a = v[i];
    float b = v[i + half];
    v[i] = a * cos_row[i] - b * sin_row[i];
    v[i + half] = b * cos_row[i] + a * sin_row[i];
  }
}

// cos/sin tables (n_positions, head_dim / 2), computed in float32 as transformers does:
// inv_freq = 1 / base^(2i / d), angle = (position / scale) * inv_freq.
// RoPE inverse frequencies of one base: inv_freq[i] = base^(-2i / head_dim) / scale.
std::vector<float> rope_inverse_frequencies(int64_t head_dim, float base, float scale) {
  std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = (1.0f / std::pow(base, exponent)) / scale;
  }
  return inv_freq;
}

// cos and sin of the angles of n positions from `first`: (n, head_dim / 2) each.
void fill_rope_rows(const std::vector<float>& inv_freq, int64_t first, int64_t n, float* cos_out, float* sin_out) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      float angle = static_cast<float>(first + t) * inv_freq[i];
      cos_out[t * half + i] = std::cos(angle);
      sin_out[t * half + i] = std::sin(angle);
    }
  }
}

}  // namespace

Model::Model(const std::string& path, Precision precision)
    : file_(std::make_unique<GGUFFile>(path)), precision_(precision) {
  const GGUFFile& f = *file_;
  config_ = read_config(f);
  ModelConfig& c = config_;

  try {
    tokenizer_ = std::make_unique<Tokenizer>(read_tokenizer_spec(f));
  } catch (const std::invalid_argument& e) {
    throw ModelLoadError(f.where() + "invalid tokenizer: " + e.what());
  }
  c.end_of_turn_id = tokenizer_->piece_to_id("<end_of_turn>");

  const GGUFTensorInfo* embd = f.find_tensor("token_embd.weight");
  if (!embd) throw ModelLoadError(f.where() + "required tensor 'token_embd.weight' is missing");
  if (embd->shape.size() != 2 || embd->shape[0] != c.d_model) {
    throw ModelLoadError(f.where() + "tensor 'token_embd.weight' must have shape [" +
                         std::to_string(c.d_model) + ", vocab]");
  }
  c.vocab_size = embd->shape[1];
  if (c.vocab_size != tokenizer_->vocab_size()) {
    throw ModelLoadError(f.where() + "the embedding has " + std::to_string(c.vocab_size) +
                         " rows but the tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                         " tokens; the vocabulary sizes must agree");
  }
  if (f.find_tensor("output.weight")) {
    // NOTE: Gemma 3 ties the LM head to the embedding; a separate output matrix is ignored.
    log(LogLevel::kWarning, f.where() + "ignoring 'output.weight': Gemma 3 uses the tied embedding");
  }
  token_embd_ = load_matrix(f, "token_embd.weight", c.vocab_size, c.d_model, precision);
  output_norm_ = load_vector(f, "output_norm.weight", c.d_model);

  const int64_t q_dim = c.n_heads * c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  layers_.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    LayerWeights& l = layers_[i];
    l.attn_norm = load_vector(f, b + "attn_norm.weight", c.d_model);
    l.q_norm = load_vector(f, b + "attn_q_norm.weight", c.head_dim);
    l.k_norm = load_vector(f, b + "attn_k_norm.weight", c.head_dim);
    l.post_attn_norm = load_vector(f, b + "post_attention_norm.weight", c.d_model);
    l.ffn_norm = load_vector(f, b + "ffn_norm.weight", c.d_model);
    l.post_ffn_norm = load_vector(f, b + "post_ffw_norm.weight", c.d_model);
    l.wq = load_matrix(f, b + "attn_q.weight", q_dim, c.d_model, precision);
    l.wk = load_matrix(f, b + "attn_k.weight", kv_dim, c.d_model, precision);
    l.wv = load_matrix(f, b + "attn_v.weight", kv_dim, c.d_model, precision);
    l.wo = load_matrix(f, b + "attn_output.weight", c.d_model, q_dim, precision);
    l.gate = load_matrix(f, b + "ffn_gate.weight", c.d_ff, c.d_model, precision);
    l.up = load_matrix(f, b + "ffn_up.weight", c.d_ff, c.d_model, precision);
    l.down = load_matrix(f, b + "ffn_down.weight", c.d_model, c.d_ff, precision);
  }

  // Everything the model uses was copied: the metadata (about 8 MB of vocabulary for Gemma 3)
  // into the tokenizer and config, the tensors into their packed form. Pages still mapped, such
  // as the norm vectors and the neighbours that the kernel maps around each page fault, need
  // not stay resident.
  f.release_all_pages();
  release_free_heap();

  log(LogLevel::kInfo, "loaded " + c.name + " (" + std::to_string(c.n_layers) + " layers, d_model " +
                           std::to_string(c.d_model) + ", vocab " + std::to_string(c.vocab_size) +
                           ") from " + path + " as " +
                           (precision == Precision::kF32 ? "f32 (reference path)" : "quantized"));
  for (const std::string& line : layout_summary()) log(LogLevel::kInfo, "weights: " + line);
}

int64_t Model::weight_bytes() const {
  int64_t total = token_embd_.bytes();
  for (const LayerWeights& l : layers_) {
    total += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.gate.bytes() +
             l.up.bytes() + l.down.bytes();
  }
  return total;
}

std::vector<std::string> Model::layout_summary() const {
  std::map<std::string, int> counts;
  counts[token_embd_.layout()]++;
  for (const LayerWeights& l : layers_) {
    for (const PackedWeight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) {
      counts[w->layout()]++;
    }
  }
  std::vector<std::string> lines;
  for (const auto& [layout, n] : counts) lines.push_back(layout + ": " + std::to_string(n) + " tensors");
  return lines;
}

const char* kv_type_name(KVType type) {
  switch (type) {
    case KVType::kF32: return "f32";
    case KVType::kF16: return "f16";
    case KVType::kInt8: return "int8";
  }
  return "?";
}

namespace {

int64_t kv_row_bytes(int64_t kv_dim, KVType type) {
  switch (type) {
    case KVType::kF32: return kv_dim * 4;
    case KVType::kF16: return kv_dim * 2;
    case KVType::kInt8: return kv_dim + kv_dim / kKVBlock * static_cast<int64_t>(sizeof(float));
  }
  return 0;
}

}  // namespace

int64_t kv_bytes_per_position(const ModelConfig& config, KVType type) {
  return 2 * kv_row_bytes(config.n_kv_heads * config.head_dim, type);
}

Context::Context(const Model& model, const ContextOptions& options) : model_(model), options_(options) {
  const ModelConfig& c = model.config();
  if (options_.n_ctx < 1 || options_.n_ctx > c.max_context) {
    throw InvalidArgument("n_ctx " + std::to_string(options_.n_ctx) + " is outside 1.." +
                          std::to_string(c.max_context) + " (the model's context_length)");
  }
  if (options_.n_batch < 1) {
    throw InvalidArgument("n_batch must be at least 1, got " + std::to_string(options_.n_batch));
  }
  // The same bound as llama.cpp's GGML_MAX_N_THREADS; more threads than cores only slows it down.
  constexpr int kMaxThreads = 512;
  if (options_.n_threads < 1 || options_.n_threads > kMaxThreads) {
    throw InvalidArgument("n_threads must be between 1 and " + std::to_string(kMaxThreads) + ", got " +
                          std::to_string(options_.n_threads) + "; use at most the number of CPU cores (" +
                          std::to_string(std::thread::hardware_concurrency()) + " here)");
  }
  options_.n_batch = std::min(options_.n_batch, options_.n_ctx);
  pool_ = std::make_unique<ThreadPool>(options_.n_threads);

  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  if (options_.kv_type == KVType::kInt8 && c.head_dim % kKVBlock != 0) {
    throw InvalidArgument("an int8 KV cache needs a head size that is a multiple of " + std::to_string(kKVBlock) +
                          "; this model's is " + std::to_string(c.head_dim) + ", use f16 or f32");
  }
  row_bytes_ = kv_row_bytes(kv_dim, options_.kv_type);
  k_cache_.resize(c.n_layers);
  v_cache_.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    k_cache_[i].assign(static_cast<size_t>(cache_slots(i) * row_bytes_), 0);
    v_cache_[i].assign(static_cast<size_t>(cache_slots(i) * row_bytes_), 0);
  }
  rope_inv_freq_local_ = rope_inverse_frequencies(c.head_dim, c.rope_base_local, 1.0f);
  rope_inv_freq_global_ = rope_inverse_frequencies(c.head_dim, c.rope_base_global, c.rope_scale_global);

  const int64_t b = options_.n_batch;
  for (auto* table : {&rope_cos_local_, &rope_sin_local_, &rope_cos_global_, &rope_sin_global_}) {
    table->resize(b * (c.head_dim / 2));
  }
  x_.resize(b * c.d_model);
  xn_.resize(b * c.d_model);
  q_.resize(b * c.n_heads * c.head_dim);
  k_.resize(b * kv_dim);
  v_.resize(b * kv_dim);
  attn_.resize(b * c.n_heads * c.head_dim);
  proj_.resize(b * c.d_model);
  gate_.resize(b * c.d_ff);
  up_.resize(b * c.d_ff);
  tiles_.resize(static_cast<size_t>(options_.n_threads * attention_tile_floats()));
}

Context::~Context() = default;

int64_t Context::cache_slots(int64_t layer) const {
  const ModelConfig& c = model_.config();
  // Sliding layers keep the window only: a chunk reads its own keys from the scratch buffers
  // and is written to the ring after its attention.
  if (!c.is_sliding(layer)) return options_.n_ctx;
  return std::min(options_.n_ctx, c.sliding_window);
}

bool Context::truncate(int64_t n) {
  if (n < 0 || n > n_past_) {
    throw InvalidArgument("cannot truncate the cache to " + std::to_string(n) + " positions; it contains " +
                          std::to_string(n_past_));
  }
  const ModelConfig& c = model_.config();
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const int64_t slots = cache_slots(il);
    if (!c.is_sliding(il) || slots >= options_.n_ctx) continue;
    // The ring stores positions n_past - slots .. n_past - 1, and the next token at position n
    // attends to n - window + 1 .. n.
    const int64_t oldest_needed = std::max<int64_t>(0, n - c.sliding_window + 1);
    if (oldest_needed < n_past_ - slots) {
      n_past_ = 0;
      return false;
    }
  }
  n_past_ = n;
  return true;
}

int64_t Context::kv_bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < k_cache_.size(); ++i) {
    total += static_cast<int64_t>(k_cache_[i].size() + v_cache_[i].size());
  }
  return total;
}

void Context::eval(const int32_t* tokens, int64_t n, int64_t logits_from, float* logits_out,
                   const EvalInputs* inputs) {
  const ModelConfig& c = model_.config();
  if (n < 0) throw InvalidArgument("token count must not be negative");
  if (n_past_ + n > options_.n_ctx) {
    throw InvalidArgument("context overflow: " + std::to_string(n_past_) + " cached + " + std::to_string(n) +
                          " new tokens exceed n_ctx " + std::to_string(options_.n_ctx) +
                          "; create the model with a larger n_ctx or shorten the prompt");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      throw InvalidArgument("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                            " is outside the vocabulary (0.." + std::to_string(c.vocab_size - 1) + ")");
    }
  }
  if (logits_from < n && !logits_out) throw InvalidArgument("logits requested without an output buffer");

  std::vector<std::pair<int64_t, int64_t>> spans;
  if (inputs) {
    if ((inputs->embeddings == nullptr) != (inputs->replace == nullptr)) {
      throw InvalidArgument("embeddings and their replace mask must be given together");
    }
    spans = inputs->bidirectional_spans;
    std::sort(spans.begin(), spans.end());
    for (size_t i = 0; i < spans.size(); ++i) {
      const auto [begin, end] = spans[i];
      if (begin < 0 || end > n || begin >= end || (i > 0 && begin < spans[i - 1].second)) {
        throw InvalidArgument("bidirectional span [" + std::to_string(begin) + ", " + std::to_string(end) +
                              ") is empty, overlaps another or lies outside the " + std::to_string(n) + " tokens");
      }
      if (end - begin > options_.n_batch) {
        throw InvalidArgument("a bidirectional span of " + std::to_string(end - begin) +
                              " tokens does not fit in n_batch " + std::to_string(options_.n_batch) +
                              "; create the model with a larger n_batch");
      }
    }
  }

  size_t next_span = 0;
  for (int64_t start = 0; start < n;) {
    int64_t len = std::min(options_.n_batch, n - start);
    // End the chunk before a span it would cut in two. Spans that end within the chunk are
    // whole; the first span past them is cut when it starts inside the chunk.
    while (next_span < spans.size() && spans[next_span].second <= start + len) ++next_span;
    if (next_span < spans.size() && spans[next_span].first < start + len) len = spans[next_span].first - start;
    attend_end_.assign(static_cast<size_t>(len), 0);
    for (int64_t t = 0; t < len; ++t) attend_end_[t] = t + 1;
    for (const auto& [begin, end] : spans) {
      for (int64_t i = std::max(begin, start); i < std::min(end, start + len); ++i) attend_end_[i - start] = end - start;
    }
    const int64_t chunk_from = std::max<int64_t>(0, logits_from - start);
    float* out = nullptr;
    if (chunk_from < len) out = logits_out + (start + chunk_from - logits_from) * c.vocab_size;
    const float* embeddings = inputs && inputs->embeddings ? inputs->embeddings + start * c.d_model : nullptr;
    const uint8_t* replace = inputs && inputs->replace ? inputs->replace + start : nullptr;
    eval_chunk(tokens + start, len, chunk_from, out, embeddings, replace);
    start += len;
  }
}

void Context::eval_chunk(const int32_t* tokens, int64_t n, int64_t logits_from, float* logits_out,
                         const float* embeddings, const uint8_t* replace) {
  const ModelConfig& c = model_.config();
  const int64_t d = c.d_model;
  const int64_t hd = c.head_dim;
  const int64_t q_dim = c.n_heads * hd;
  const int64_t kv_dim = c.n_kv_heads * hd;
  ThreadPool& pool = *pool_;
  const VecOps& vec = vec_ops();
  auto rms_norm = [&](const float* x, const float* w, float* out, int64_t len) {
    vec.rms_norm(x, w, out, len, c.norm_eps);
  };

  // Embedding lookup, scaled by sqrt(d_model) in float32; given rows (image soft tokens) are
  // used as they are, as transformers' Gemma 3 scatters image features into the scaled embeddings.
  for (int64_t t = 0; t < n; ++t) {
    float* row = &x_[t * d];
    if (replace && replace[t]) {
      std::memcpy(row, embeddings + t * d, d * sizeof(float));
      continue;
    }
    model_.token_embd().dequantize_row(tokens[t], row);
    for (int64_t i = 0; i < d; ++i) row[i] *= c.embedding_scale;
  }

  // RoPE angles of this chunk's positions, shared by all layers of a kind.
  fill_rope_rows(rope_inv_freq_local_, n_past_, n, rope_cos_local_.data(), rope_sin_local_.data());
  fill_rope_rows(rope_inv_freq_global_, n_past_, n, rope_cos_global_.data(), rope_sin_global_.data());

  for (int64_t il = 0; il < c.n_layers; ++il) {
    const LayerWeights& l = model_.layer(il);
    const bool sliding = c.is_sliding(il);
    const std::vector<float>& rope_cos = sliding ? rope_cos_local_ : rope_cos_global_;
    const std::vector<float>& rope_sin = sliding ? rope_sin_local_ : rope_sin_global_;

    // Attention block: pre-norm, Q/K/V projections.
    for (int64_t t = 0; t < n; ++t) rms_norm(&x_[t * d], l.attn_norm.data(), &xn_[t * d], d);
    {
      const PackedWeight* weights[3] = {&l.wq, &l.wk, &l.wv};
      float* outputs[3] = {q_.data(), k_.data(), v_.data()};
      matmul_multi(weights, outputs, 3, xn_.data(), n, pool);  // one activation rounding, one dispatch
    }

    // QK-norm per head, then RoPE at each token's position.
    const int64_t slots = cache_slots(il);
    for (int64_t t = 0; t < n; ++t) {
      const float* cos_row = &rope_cos[t * (hd / 2)];
      const float* sin_row = &rope_sin[t * (hd / 2)];
      for (int64_t h = 0; h < c.n_heads; ++h) {
        float* qh = &q_[t * q_dim + h * hd];
        rms_norm(qh, l.q_norm.data(), qh, hd);
        apply_rope(qh, hd, cos_row, sin_row);
      }
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        float* kh = &k_[t * kv_dim + h * hd];
        rms_norm(kh, l.k_norm.data(), kh, hd);
        apply_rope(kh, hd, cos_row, sin_row);
      }
      // Attention reads this chunk's keys and values from k_ and v_; rounding them to the cache
      // type first makes the result independent of how a prompt is cut into chunks.
      round_trip_kv(&k_[t * kv_dim]);
      round_trip_kv(&v_[t * kv_dim]);
    }

    attention(il, n);
    for (int64_t t = 0; t < n; ++t) store_kv(il, (n_past_ + t) % slots, &k_[t * kv_dim], &v_[t * kv_dim]);

    // Output projection, post-attention norm, residual.
    matmul(l.wo, attn_.data(), n, proj_.data(), pool);
    for (int64_t t = 0; t < n; ++t) {
      float* p = &proj_[t * d];
      rms_norm(p, l.post_attn_norm.data(), p, d);
      float* x = &x_[t * d];
      for (int64_t i = 0; i < d; ++i) x[i] += p[i];
    }

    // Feed-forward block: GeGLU (tanh GELU on the gate), post-norm, residual.
    for (int64_t t = 0; t < n; ++t) rms_norm(&x_[t * d], l.ffn_norm.data(), &xn_[t * d], d);
    {
      const PackedWeight* weights[2] = {&l.gate, &l.up};
      float* outputs[2] = {gate_.data(), up_.data()};
      matmul_multi(weights, outputs, 2, xn_.data(), n, pool);
    }
    // GELU with the tanh approximation: Gemma's hidden_activation is "gelu_pytorch_tanh".
    vec.gelu_tanh_mul(gate_.data(), up_.data(), n * c.d_ff);
    matmul(l.down, gate_.data(), n, proj_.data(), pool);
    for (int64_t t = 0; t < n; ++t) {
      float* p = &proj_[t * d];
      rms_norm(p, l.post_ffn_norm.data(), p, d);
      float* x = &x_[t * d];
      for (int64_t i = 0; i < d; ++i) x[i] += p[i];
    }
  }

  // Final norm and the tied LM head, only for the rows whose logits were requested.
  if (logits_out && logits_from < n) {
    const int64_t rows = n - logits_from;
    for (int64_t t = logits_from; t < n; ++t) {
      rms_norm(&x_[t * d], model_.output_norm().data(), &xn_[(t - logits_from) * d], d);
    }
    matmul(model_.token_embd(), xn_.data(), rows, logits_out, pool);
  }
  n_past_ += n;
}

namespace {

constexpr uint32_t kStateMagic = 0x53564b47;  // "GKVS" read as a little-endian uint32
constexpr uint32_t kStateVersion = 1;

// Settings a saved state must share with the context that restores it.
struct StateHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t kv_type;
  uint32_t reserved;
  int64_t n_layers;
  int64_t d_model;
  int64_t vocab_size;
  int64_t kv_dim;
  int64_t n_ctx;
  int64_t n_batch;
  int64_t row_bytes;
  int64_t n_past;
};

}  // namespace

std::vector<uint8_t> Context::save_state() const {
  const ModelConfig& c = model_.config();
  StateHeader h{kStateMagic, kStateVersion, static_cast<uint32_t>(options_.kv_type), 0, c.n_layers, c.d_model,
                c.vocab_size, c.n_kv_heads * c.head_dim, options_.n_ctx, options_.n_batch, row_bytes_, n_past_};
  size_t total = sizeof(h);
  for (int64_t il = 0; il < c.n_layers; ++il) {
    total += 2 * static_cast<size_t>(std::min(n_past_, cache_slots(il)) * row_bytes_);
  }
  std::vector<uint8_t> out(total);
  std::memcpy(out.data(), &h, sizeof(h));
  size_t pos = sizeof(h);
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const size_t bytes = static_cast<size_t>(std::min(n_past_, cache_slots(il)) * row_bytes_);
    std::memcpy(out.data() + pos, k_cache_[il].data(), bytes);
    pos += bytes;
    std::memcpy(out.data() + pos, v_cache_[il].data(), bytes);
    pos += bytes;
  }
  return out;
}

void Context::load_state(const uint8_t* data, size_t size) {
  const ModelConfig& c = model_.config();
  n_past_ = 0;
  StateHeader h;
  if (size < sizeof(h)) throw InvalidArgument("saved state is truncated: " + std::to_string(size) + " bytes");
  std::memcpy(&h, data, sizeof(h));
  if (h.magic != kStateMagic || h.version != kStateVersion) {
    throw InvalidArgument("not a gemma3-edge KV state (bad magic or version " + std::to_string(h.version) + ")");
  }
  if (h.n_layers != c.n_layers || h.d_model != c.d_model || h.vocab_size != c.vocab_size ||
      h.kv_dim != c.n_kv_heads * c.head_dim) {
    throw InvalidArgument("saved state belongs to another model (" + std::to_string(h.n_layers) + " layers, d_model " +
                          std::to_string(h.d_model) + ")");
  }
  if (h.kv_type != static_cast<uint32_t>(options_.kv_type) || h.n_ctx != options_.n_ctx ||
      h.n_batch != options_.n_batch || h.row_bytes != row_bytes_) {
    throw InvalidArgument("saved state was made with other context settings (kv_type, n_ctx " + std::to_string(h.n_ctx) +
                          ", n_batch " + std::to_string(h.n_batch) + "); create the model with the same settings");
  }
  if (h.n_past < 0 || h.n_past > options_.n_ctx) {
    throw InvalidArgument("saved state has an invalid position count " + std::to_string(h.n_past));
  }
  size_t expected = sizeof(h);
  for (int64_t il = 0; il < c.n_layers; ++il) {
    expected += 2 * static_cast<size_t>(std::min(h.n_past, cache_slots(il)) * row_bytes_);
  }
  if (size != expected) {
    throw InvalidArgument("saved state has " + std::to_string(size) + " bytes, expected " + std::to_string(expected));
  }
  size_t pos = sizeof(h);
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const size_t bytes = static_cast<size_t>(std::min(h.n_past, cache_slots(il)) * row_bytes_);
    std::memcpy(k_cache_[il].data(), data + pos, bytes);
    pos += bytes;
    std::memcpy(v_cache_[il].data(), data + pos, bytes);
    pos += bytes;
  }
  n_past_ = h.n_past;
}

void Context::store_kv(int64_t il, int64_t slot, const float* k, const float* v) {
  const ModelConfig& c = model_.config();
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  uint8_t* rows[2] = {&k_cache_[il][slot * row_bytes_], &v_cache_[il][slot * row_bytes_]};
  const float* values[2] = {k, v};
  for (int j = 0; j < 2; ++j) {
    switch (options_.kv_type) {
      case KVType::kF32:
        std::memcpy(rows[j], values[j], kv_dim * sizeof(float));
        break;
      case KVType::kF16: {
        uint16_t* out = reinterpret_cast<uint16_t*>(rows[j]);
        for (int64_t i = 0; i < kv_dim; ++i) out[i] = fp32_to_fp16(values[j][i]);
        break;
      }
      case KVType::kInt8:
        quantize_kv_q8(values[j], reinterpret_cast<int8_t*>(rows[j]), reinterpret_cast<float*>(rows[j] + kv_dim),
                       kv_dim);
        break;
    }
  }
}

void Context::round_trip_kv(float* row) const {
  const ModelConfig& c = model_.config();
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  switch (options_.kv_type) {
    case KVType::kF32:
      break;
    case KVType::kF16:
      for (int64_t i = 0; i < kv_dim; ++i) row[i] = fp16_to_fp32(fp32_to_fp16(row[i]));
      break;
    case KVType::kInt8: {
      std::vector<int8_t> q(static_cast<size_t>(kv_dim));
      std::vector<float> scales(static_cast<size_t>(kv_dim / kKVBlock));
      quantize_kv_q8(row, q.data(), scales.data(), kv_dim);
      for (int64_t i = 0; i < kv_dim; ++i) row[i] = scales[i / kKVBlock] * static_cast<float>(q[i]);
      break;
    }
  }
}

namespace {

// Attention works on tasks of query rows (tokens x heads sharing one KV head) that go through
// the keys in blocks of kKeyBlock positions aligned to multiples of kKeyBlock, with an online
// softmax. Every score is the `dot` of its query and key, and every output accumulates the
// values one key after another (VecOps::dot_rows, axpy_rows). So a token's result does not
// depend on the other rows of its task, and a prompt gives the same logits bit for bit whether
// it is evaluated at once, in chunks or token by token.
constexpr int64_t kQueryRows = 64;
constexpr int64_t kKeyBlock = 64;

}  // namespace

int64_t Context::attention_tile_floats() const {
  const int64_t hd = model_.config().head_dim;
  // Scaled queries, converted keys and values (f16 and int8 caches), weights, the output,
  // and the running maximum and sum per row.
  return kQueryRows * hd + 2 * kKeyBlock * hd + kQueryRows * kKeyBlock + kQueryRows * hd + 2 * kQueryRows;
}

void Context::gather_kv(int64_t il, bool values, int64_t first, int64_t count, int64_t offset, float* out) const {
  const ModelConfig& c = model_.config();
  const int64_t hd = c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * hd;
  const int64_t slots = cache_slots(il);
  const uint8_t* cache = values ? v_cache_[il].data() : k_cache_[il].data();
  const ScratchBuffer& chunk = values ? v_ : k_;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t position = first + j;
    float* dst = out + j * hd;
    if (position >= n_past_) {
      std::memcpy(dst, &chunk[(position - n_past_) * kv_dim + offset], hd * sizeof(float));
      continue;
    }
    const uint8_t* row = cache + (position % slots) * row_bytes_;
    const VecOps& vec = vec_ops();
    switch (options_.kv_type) {
      case KVType::kF32:
        std::memcpy(dst, reinterpret_cast<const float*>(row) + offset, hd * sizeof(float));
        break;
      case KVType::kF16:
        vec.f16_to_f32(reinterpret_cast<const uint16_t*>(row) + offset, dst, hd);
        break;
      case KVType::kInt8:
        vec.q8_to_f32(reinterpret_cast<const int8_t*>(row) + offset,
                      reinterpret_cast<const float*>(row + kv_dim) + offset / kKVBlock, dst, hd);
        break;
    }
  }
}

// Causal attention for the n tokens of the current chunk (positions n_past_ ..), over the
// cache. Sliding layers see the last `sliding_window` positions, the query's own included;
// the tokens of an image also see the rest of their image.
void Context::attention(int64_t il, int64_t n) {
  const ModelConfig& c = model_.config();
  const int64_t hd = c.head_dim;
  const int64_t q_dim = c.n_heads * hd;
  const int64_t kv_dim = c.n_kv_heads * hd;
  const int64_t group = c.n_heads / c.n_kv_heads;
  // A task covers `heads` heads of one KV head's group for `tokens` tokens. Long chunks take
  // the whole group and enough tokens for kQueryRows rows; short ones (decode) split the
  // group so that every thread has work.
  int64_t heads = group;
  int64_t tokens = std::max<int64_t>(1, kQueryRows / group);
  if (n * group < kQueryRows) {
    tokens = 1;
    while (heads % 2 == 0 && n * c.n_kv_heads * (group / heads) < options_.n_threads) heads /= 2;
  }
  const int64_t token_blocks = (n + tokens - 1) / tokens;
  const int64_t n_tasks = token_blocks * (c.n_heads / heads);
  const bool sliding = c.is_sliding(il);
  const int64_t slots = cache_slots(il);
  const bool f32_cache = options_.kv_type == KVType::kF32;
  const int64_t tile_floats = attention_tile_floats();
  const VecOps& vec = vec_ops();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto first_of = [&](int64_t t) {
    return sliding ? std::max<int64_t>(0, n_past_ + t - c.sliding_window + 1) : int64_t{0};
  };
  auto last_of = [&](int64_t t) { return n_past_ + attend_end_[t] - 1; };

  std::atomic<int64_t> next_task{0};
  pool_->run_dynamic([&](int thread, int) {
    float* queries = &tiles_[thread * tile_floats];  // (rows, hd), scaled
    float* converted = queries + kQueryRows * hd;    // (kKeyBlock, hd) keys, then values
    float* probs = converted + 2 * kKeyBlock * hd;   // (rows, count)
    float* out = probs + kQueryRows * kKeyBlock;     // (rows, hd)
    float* row_max = out + kQueryRows * hd;
    float* row_sum = row_max + kQueryRows;

    // Calls fn(position, length, rows, stride) for each run of positions in [b0, b0 + count)
    // whose keys (or values) lie at one stride. A run is part of this chunk's scratch, a
    // stretch of the float32 cache that does not wrap, or rows converted from an f16 or int8 cache.
    auto for_each_run = [&](bool values, int64_t b0, int64_t count, int64_t offset, auto&& fn) {
      for (int64_t pos = b0; pos < b0 + count;) {
        int64_t len = b0 + count - pos;
        if (pos >= n_past_) {
          const ScratchBuffer& chunk = values ? v_ : k_;
          fn(pos, len, &chunk[(pos - n_past_) * kv_dim + offset], kv_dim);
        } else {
          const int64_t slot = pos % slots;
          len = std::min(len, n_past_ - pos);
          const uint8_t* cache = values ? v_cache_[il].data() : k_cache_[il].data();
          if (f32_cache) {
            len = std::min(len, slots - slot);
            fn(pos, len, reinterpret_cast<const float*>(cache + slot * row_bytes_) + offset,
               row_bytes_ / static_cast<int64_t>(sizeof(float)));
          } else {
            float* dst = converted + (values ? kKeyBlock * hd : 0);
            gather_kv(il, values, pos, len, offset, dst);
            fn(pos, len, dst, hd);
          }
        }
        pos += len;
      }
    };

    for (int64_t task = next_task++; task < n_tasks; task = next_task++) {
      const int64_t head0 = (task / token_blocks) * heads;
      const int64_t t0 = (task % token_blocks) * tokens;
      const int64_t t1 = std::min(n, t0 + tokens);
      const int64_t rows = (t1 - t0) * heads;
      const int64_t kv_offset = (head0 / group) * hd;

      // Row r is token t0 + r / heads, head head0 + r % heads.
      for (int64_t r = 0; r < rows; ++r) {
        const float* q = &q_[(t0 + r / heads) * q_dim + (head0 + r % heads) * hd];
        for (int64_t i = 0; i < hd; ++i) queries[r * hd + i] = c.attention_scale * q[i];
      }
      int64_t k_first = first_of(t0), k_last = last_of(t0);
      for (int64_t t = t0; t < t1; ++t) {
        k_first = std::min(k_first, first_of(t));
        k_last = std::max(k_last, last_of(t));
      }
      std::fill(out, out + rows * hd, 0.0f);
      std::fill(row_max, row_max + rows, neg_inf);
      std::fill(row_sum, row_sum + rows, 0.0f);

      for (int64_t b0 = k_first / kKeyBlock * kKeyBlock; b0 <= k_last; b0 += kKeyBlock) {
        const int64_t count = std::min(kKeyBlock, k_last + 1 - b0);
        for_each_run(false, b0, count, kv_offset, [&](int64_t pos, int64_t len, const float* keys, int64_t ld) {
          vec.dot_rows(queries, hd, rows, keys, ld, len, hd, probs + (pos - b0), count);
        });

        bool any = false;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = t0 + r / heads;
          const int64_t lo = std::max<int64_t>(first_of(t) - b0, 0);
          const int64_t hi = std::min<int64_t>(last_of(t) - b0 + 1, count);
          float* p = &probs[r * count];
          if (lo >= hi) {
            std::fill(p, p + count, 0.0f);
            continue;
          }
          // Keys outside the row's range get exactly zero weight: earlier positions, ring slots
          // that a later position reused, and later tokens.
          std::fill(p, p + lo, 0.0f);
          std::fill(p + hi, p + count, 0.0f);
          const float new_max = std::max(row_max[r], vec.max(p + lo, hi - lo));
          if (new_max > row_max[r]) {
            const float factor = row_max[r] == neg_inf ? 0.0f : std::exp(row_max[r] - new_max);
            row_sum[r] *= factor;
            vec.scale(factor, &out[r * hd], hd);
            row_max[r] = new_max;
          }
          row_sum[r] += vec.exp_shifted(p + lo, hi - lo, new_max);
          any = true;
        }
        if (!any) continue;
        for_each_run(true, b0, count, kv_offset, [&](int64_t pos, int64_t len, const float* vals, int64_t ld) {
          vec.axpy_rows(probs + (pos - b0), count, rows, vals, ld, len, hd, out, hd);
        });
      }

      for (int64_t r = 0; r < rows; ++r) {
        float* dst = &attn_[(t0 + r / heads) * q_dim + (head0 + r % heads) * hd];
        const float inv = 1.0f / row_sum[r];
        for (int64_t i = 0; i < hd; ++i) dst[i] = out[r * hd + i] * inv;
      }
    }
  });
}

}  // namespace g3e
