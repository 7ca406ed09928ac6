// Gemma 3 text-model hyper-parameters, read once from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace g3e {

class GGUFFile;

enum class LayerType { kSliding, kGlobal };

struct ModelConfig {
  std::string architecture;   // "gemma3"
  std::string name;           // general.name, for logs
  int64_t n_layers = 0;
  int64_t d_model = 0;        // embedding_length
  int64_t d_ff = 0;           // feed_forward_length
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;       // key_length == value_length
  int64_t vocab_size = 0;     // rows of token_embd
  int64_t max_context = 0;    // context_length: the longest context the model was trained for
  int64_t sliding_window = 0; // keys visible to a sliding layer, the query itself included
  float norm_eps = 1e-6f;
  float attention_scale = 0;  // query_pre_attn_scalar^-0.5
  float embedding_scale = 0;  // sqrt(d_model) in float32, as transformers and llama.cpp use it

  // RoPE: sliding layers use rope_base_local unscaled; global layers use rope_base_global with
  // positions divided by rope_scale_global (linear scaling, 8 on 4B+ for 128K context).
  float rope_base_local = 10000.0f;
  float rope_base_global = 1000000.0f;
  float rope_scale_global = 1.0f;

  std::vector<LayerType> layer_types;  // (n_layers)

  int32_t bos_id = 2;
  int32_t eos_id = 1;
  int32_t end_of_turn_id = -1;  // id of "<end_of_turn>" when the vocabulary has it

  bool is_sliding(int64_t layer) const { return layer_types[layer] == LayerType::kSliding; }
  std::string size_label() const;  // "270M", "1B", ... from the layer count; "" when unknown
};

// Reads and validates the configuration. Throws ModelLoadError for another architecture or
// inconsistent sizes.
ModelConfig read_config(const GGUFFile& file);

}  // namespace g3e
