// Gemma 3 text model: weights loaded from a GGUF file, and the per-sequence context (KV cache)
// that runs the forward pass.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "gguf.h"
#include "kernels/matmul.h"
#include "threadpool.h"
#include "tokenizer.h"

namespace g3e {

enum class Precision {
  kQuantized,  // weights as stored (run natively or repacked without loss), int8 activations
  kF32,        // every weight dequantized to float32, float32 activations: the reference path
};

struct LayerWeights {
  std::vector<float> attn_norm;       // (d_model)  pre-attention RMSNorm, (1 + w) folded in
  std::vector<float> q_norm;          // (head_dim) QK-norm on each query head
  std::vector<float> k_norm;          // (head_dim) QK-norm on each key head
  std::vector<float> post_attn_norm;  // (d_model)
  std::vector<float> ffn_norm;        // (d_model)  pre-feed-forward RMSNorm
  std::vector<float> post_ffn_norm;   // (d_model)
  PackedWeight wq;    // (n_heads * head_dim, d_model)
  PackedWeight wk;    // (n_kv_heads * head_dim, d_model)
  PackedWeight wv;    // (n_kv_heads * head_dim, d_model)
  PackedWeight wo;    // (d_model, n_heads * head_dim)
  PackedWeight gate;  // (d_ff, d_model)
  PackedWeight up;    // (d_ff, d_model)
  PackedWeight down;  // (d_model, d_ff)
};

class Model {
 public:
  Model(const std::string& path, Precision precision);

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GGUFFile& file() const { return *file_; }
  Precision precision() const { return precision_; }

  const PackedWeight& token_embd() const { return token_embd_; }  // (vocab, d_model), tied LM head
  const std::vector<float>& output_norm() const { return output_norm_; }
  const LayerWeights& layer(int64_t i) const { return layers_[i]; }

  // Bytes of weight data one forward token reads (all layers plus the LM head).
  int64_t weight_bytes() const;
  // One line per distinct tensor layout, e.g. "q4_K -> i4b32+zp (repacked): 27 tensors".
  std::vector<std::string> layout_summary() const;

 private:
  std::unique_ptr<GGUFFile> file_;
  ModelConfig config_;
  Precision precision_;
  std::unique_ptr<Tokenizer> tokenizer_;
  PackedWeight token_embd_;
  std::vector<float> output_norm_;  // (d_model)
  std::vector<LayerWeights> layers_;
};

// Element type of the KV cache.
enum class KVType {
  kF32,
  kF16,   // IEEE half
  kInt8,  // int8 in blocks of 32 with a float scale each (9 bits per value)
};

const char* kv_type_name(KVType type);
// Bytes one cached position takes in one layer, keys and values together.
int64_t kv_bytes_per_position(const ModelConfig& config, KVType type);

struct ContextOptions {
  int64_t n_ctx = 4096;   // maximum number of positions (prompt plus generated tokens)
  int64_t n_batch = 512;  // tokens per forward chunk during prefill
  int n_threads = 1;
  KVType kv_type = KVType::kF32;
};

// Extra inputs of an eval() call, for multimodal prompts.
struct EvalInputs {
  // (n, d_model) hidden states used in place of the scaled token embedding wherever
  // replace[i] is nonzero (image soft tokens); both null when unused.
  const float* embeddings = nullptr;
  const uint8_t* replace = nullptr;
  // [begin, end) token indices (within the call) whose tokens attend to each other in both
  // directions, as the tokens of one image do; causal attention everywhere else. A span must
  // fit in one chunk of n_batch tokens.
  std::vector<std::pair<int64_t, int64_t>> bidirectional_spans;
};

// Float buffer that is not written when allocated, so the pages of a chunk's scratch that a
// short prompt never uses do not become resident.
class ScratchBuffer {
 public:
  void resize(size_t n) {
    data_.reset(new float[n]);
    size_ = n;
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  float& operator[](size_t i) { return data_[i]; }
  const float& operator[](size_t i) const { return data_[i]; }
  size_t size() const { return size_; }

 private:
  std::unique_ptr<float[]> data_;
  size_t size_ = 0;
};

// One sequence being evaluated: the KV cache, scratch buffers and a thread pool.
class Context {
 public:
  Context(const Model& model, const ContextOptions& options);
  ~Context();

  const Model& model() const { return model_; }
  const ContextOptions& options() const { return options_; }
  int64_t n_past() const { return n_past_; }
  void reset() { n_past_ = 0; }

  // Drops cached positions n and later, keeping 0 .. n-1 for reuse by a following eval().
  // Returns false, and resets the cache to empty, when a sliding layer's ring buffer has
  // already overwritten keys that position n would need (the caller then recomputes).
  bool truncate(int64_t n);

  // Appends n tokens at positions n_past() .. n_past() + n - 1, in chunks of n_batch.
  // Logits of token i for i >= logits_from go to logits_out[(i - logits_from) * vocab]
  // (logits_out may be null when logits_from >= n). Throws InvalidArgument when the context
  // would overflow or a token id is out of range.
  void eval(const int32_t* tokens, int64_t n, int64_t logits_from, float* logits_out,
            const EvalInputs* inputs = nullptr);

  // Serialises the cached positions (keys and values of 0 .. n_past-1 that the cache holds)
  // with the settings needed to check a later restore.
  std::vector<uint8_t> save_state() const;
  // Restores what save_state() wrote. Throws InvalidArgument when the state comes from another
  // model or context settings, or is truncated or malformed; the cache is then left empty.
  void load_state(const uint8_t* data, size_t size);

  // KV cache memory in bytes (all layers).
  int64_t kv_bytes() const;
  // Number of cache slots a layer keeps: n_ctx for global layers, the window for sliding
  // layers (a ring buffer).
  int64_t cache_slots(int64_t layer) const;

  ThreadPool& pool() { return *pool_; }

 private:
  void eval_chunk(const int32_t* tokens, int64_t n, int64_t logits_from, float* logits_out,
                  const float* embeddings, const uint8_t* replace);
  void attention(int64_t layer, int64_t n);

  // For each token of the current chunk, one past the last chunk-local index it may attend to
  // (t + 1 for causal attention, the end of its bidirectional span otherwise).
  std::vector<int64_t> attend_end_;

  const Model& model_;
  ContextOptions options_;
  std::unique_ptr<ThreadPool> pool_;
  int64_t n_past_ = 0;

  // Rounds one position's keys or values (n_kv_heads * head_dim floats) to the cache type.
  void round_trip_kv(float* row) const;
  // Copies the keys or values of positions [first, first + count) for one KV head into out
  // (count rows of head_dim floats), from the chunk's scratch or the cache.
  void gather_kv(int64_t layer, bool values, int64_t first, int64_t count, int64_t offset, float* out) const;
  int64_t attention_tile_floats() const;
  // Writes the keys and values of one position (n_kv_heads * head_dim floats each) to a slot.
  void store_kv(int64_t layer, int64_t slot, const float* k, const float* v);

  // KV cache per layer: (cache_slots, row_bytes_) bytes, slot = position % slots. A row holds
  // n_kv_heads * head_dim values of kv_type; int8 rows end with their float block scales.
  int64_t row_bytes_ = 0;
  std::vector<std::vector<uint8_t>> k_cache_;
  std::vector<std::vector<uint8_t>> v_cache_;

  // RoPE: inverse frequencies of each base, and cos and sin for the current chunk's positions
  // (n_batch, head_dim / 2), so memory does not grow with n_ctx.
  std::vector<float> rope_inv_freq_local_, rope_inv_freq_global_;
  std::vector<float> rope_cos_local_, rope_sin_local_, rope_cos_global_, rope_sin_global_;

  // Scratch for one chunk of up to n_batch tokens.
  ScratchBuffer x_;     // (n_batch, d_model) residual stream
  ScratchBuffer xn_;    // (n_batch, d_model) normalised input
  ScratchBuffer q_;     // (n_batch, n_heads * head_dim)
  ScratchBuffer k_;     // (n_batch, n_kv_heads * head_dim)
  ScratchBuffer v_;     // (n_batch, n_kv_heads * head_dim)
  ScratchBuffer attn_;  // (n_batch, n_heads * head_dim)
  ScratchBuffer proj_;  // (n_batch, d_model)
  ScratchBuffer gate_;  // (n_batch, d_ff)
  ScratchBuffer up_;    // (n_batch, d_ff)
  ScratchBuffer tiles_;  // (n_threads, attention_tile_floats()) blocked attention scratch
};

}  // namespace g3e
