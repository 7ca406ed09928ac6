#include "config.h"

#include <cmath>
#include <cstdio>

#include "errors.h"
#include "gguf.h"

namespace g3e {

namespace {

// Every 6th layer (index 5, 11, ...) is global and the other five slide, in every Gemma 3 size
// (transformers' Gemma3TextConfig: sliding_window_pattern = 6; llama.cpp: set_swa_pattern(6)).
constexpr int64_t kSlidingPattern = 6;

// Limits well above every released Gemma 3 size; they keep a crafted file from asking for
// absurd allocations before any tensor is checked.
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxWidth = 1 << 17;
constexpr int64_t kMaxContext = 1 << 24;

int64_t checked_size(const GGUFFile& f, const std::string& key, int64_t max_value) {
  uint64_t v = f.get_uint(key);
  if (v == 0 || v > static_cast<uint64_t>(max_value)) {
    throw ModelLoadError(f.where() + "metadata key '" + key + "' is " + std::to_string(v) +
                         ", expected 1 to " + std::to_string(max_value));
  }
  return static_cast<int64_t>(v);
}

std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

// Returns the number at key (fallback when absent) after checking that it is finite and greater
// than minimum (or at least minimum when inclusive).
double checked_float(const GGUFFile& f, const std::string& key, double fallback, double minimum, bool inclusive) {
  const double v = f.get_float_or(key, fallback);
  const bool ok = std::isfinite(v) && (inclusive ? v >= minimum : v > minimum);
  if (!ok) {
    throw ModelLoadError(f.where() + key + " is " + format_number(v) + ", expected a finite number " +
                         (inclusive ? ">= " : "> ") + format_number(minimum));
  }
  return v;
}

}  // namespace

std::string ModelConfig::size_label() const {
  switch (n_layers) {
    case 18: return "270M";
    case 26: return "1B";
    case 34: return "4B";
    case 48: return "12B";
    case 62: return "27B";
    default: return "";
  }
}

ModelConfig read_config(const GGUFFile& f) {
  ModelConfig c;
  c.architecture = f.get_string("general.architecture");
  if (c.architecture != "gemma3") {
    throw ModelLoadError(f.where() + "architecture '" + c.architecture +
                         "' is not supported; this runtime runs Gemma 3 ('gemma3') models only");
  }
  c.name = f.has("general.name") ? f.get_string("general.name") : "gemma3";
  const std::string p = "gemma3.";
  c.n_layers = checked_size(f, p + "block_count", kMaxLayers);
  c.d_model = checked_size(f, p + "embedding_length", kMaxWidth);
  c.d_ff = checked_size(f, p + "feed_forward_length", kMaxWidth * 8);
  c.n_heads = checked_size(f, p + "attention.head_count", 1024);
  c.n_kv_heads = checked_size(f, p + "attention.head_count_kv", 1024);
  c.head_dim = checked_size(f, p + "attention.key_length", 4096);
  int64_t value_dim = checked_size(f, p + "attention.value_length", 4096);
  if (value_dim != c.head_dim) {
    throw ModelLoadError(f.where() + "attention.value_length " + std::to_string(value_dim) +
                         " differs from attention.key_length " + std::to_string(c.head_dim) +
                         "; Gemma 3 uses equal key and value sizes");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    throw ModelLoadError(f.where() + "attention.head_count " + std::to_string(c.n_heads) +
                         " is not a multiple of attention.head_count_kv " +
                         std::to_string(c.n_kv_heads));
  }
  if (c.head_dim % 2 != 0) {
    throw ModelLoadError(f.where() + "attention.key_length " + std::to_string(c.head_dim) +
                         " is odd; RoPE needs an even head size");
  }
  c.max_context = checked_size(f, p + "context_length", kMaxContext);
  c.sliding_window = checked_size(f, p + "attention.sliding_window", kMaxContext);
  c.norm_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  if (!(c.norm_eps > 0.0f && c.norm_eps < 1.0f)) {
    throw ModelLoadError(f.where() + p + "attention.layer_norm_rms_epsilon is " + format_number(c.norm_eps) +
                         ", expected a number in (0, 1)");
  }

  // query_pre_attn_scalar is not stored by llama.cpp's converter. Gemma 3 uses the head size
  // (256) everywhere except 27B, where it is d_model / n_heads = 168; llama.cpp applies the same
  // rule. Files written by our converter store it explicitly.
  double query_scalar = c.n_layers == 62 ? static_cast<double>(c.d_model / c.n_heads)
                                          : static_cast<double>(c.head_dim);
  query_scalar = checked_float(f, p + "attention.query_pre_attn_scalar", query_scalar, 0.0, false);
  c.attention_scale = static_cast<float>(1.0 / std::sqrt(query_scalar));
  c.embedding_scale = std::sqrt(static_cast<float>(c.d_model));

  c.rope_base_global = static_cast<float>(checked_float(f, p + "rope.freq_base", 1000000.0, 1.0, false));
  // llama.cpp hard-codes 10,000 for Gemma 3's sliding layers; a file may state it.
  c.rope_base_local = static_cast<float>(checked_float(f, p + "rope.freq_base_swa", 10000.0, 1.0, false));
  if (f.has(p + "rope.scaling.type")) {
    std::string type = f.get_string(p + "rope.scaling.type");
    if (type == "linear") {
      f.get_float(p + "rope.scaling.factor");  // required with type linear: throws when missing
      c.rope_scale_global = static_cast<float>(checked_float(f, p + "rope.scaling.factor", 1.0, 1.0, true));
    } else if (type != "none") {
      throw ModelLoadError(f.where() + "rope.scaling.type '" + type +
                           "' is not supported (expected 'linear' or 'none')");
    }
  } else {
    c.rope_scale_global = static_cast<float>(checked_float(f, p + "rope.scaling.factor", 1.0, 1.0, true));
  }

  c.layer_types.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    c.layer_types[i] = (i + 1) % kSlidingPattern == 0 ? LayerType::kGlobal : LayerType::kSliding;
  }

  c.bos_id = static_cast<int32_t>(f.get_uint_or("tokenizer.ggml.bos_token_id", 2));
  c.eos_id = static_cast<int32_t>(f.get_uint_or("tokenizer.ggml.eos_token_id", 1));
  return c;
}

}  // namespace g3e
