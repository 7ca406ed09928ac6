// Gemma 3's vision side: the SigLIP encoder, the average pooling of its patch grid and the
// multimodal projector that maps image tokens into the language model's embedding space,
// loaded from a llama.cpp vision-projector ("mmproj") GGUF file.
//
// Reference: transformers 5.25 SiglipVisionModel (vision_use_head=False) followed by
// Gemma3MultiModalProjector. Tensor and metadata names follow llama.cpp's mmproj layout for
// the "gemma3" projector type (gguf-py 0.19 constants: v.*, mm.input_projection,
// mm.soft_emb_norm, clip.vision.*).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "kernels/matmul.h"
#include "model.h"
#include "threadpool.h"

namespace g3e {

// Activation of the encoder's MLP.
enum class VisionActivation {
  kGeluTanh,  // GELU with the tanh approximation ("gelu_pytorch_tanh", Gemma 3's setting)
  kGeluErf,   // exact GELU ("gelu")
};

struct VisionConfig {
  int64_t image_size = 0;        // input side in pixels (896 in Gemma 3)
  int64_t patch_size = 0;        // 14
  int64_t patches_per_side = 0;  // image_size / patch_size (64)
  int64_t n_patches = 0;         // patches_per_side^2 (4096)
  int64_t width = 0;             // encoder hidden size (1152)
  int64_t d_ff = 0;              // encoder MLP size (4304)
  int64_t n_layers = 0;          // 27
  int64_t n_heads = 0;           // 16
  int64_t head_dim = 0;          // width / n_heads (72)
  int64_t projection_dim = 0;    // the language model's d_model
  int64_t pool_kernel = 0;       // side of the average-pooling window (4)
  int64_t tokens_per_side = 0;   // patches_per_side / pool_kernel (16)
  int64_t n_tokens = 0;          // image tokens per image: tokens_per_side^2 (256)
  float norm_eps = 1e-6f;        // LayerNorm and soft-token RMSNorm epsilon
  std::array<float, 3> image_mean{0.5f, 0.5f, 0.5f};
  std::array<float, 3> image_std{0.5f, 0.5f, 0.5f};
  VisionActivation activation = VisionActivation::kGeluTanh;
};

struct VisionLayerWeights {
  std::vector<float> ln1_weight, ln1_bias;  // (width) LayerNorm before attention
  std::vector<float> ln2_weight, ln2_bias;  // (width) LayerNorm before the MLP
  PackedWeight wq, wk, wv, wo;              // (width, width)
  std::vector<float> bq, bk, bv, bo;        // (width)
  PackedWeight up;                          // (d_ff, width)
  std::vector<float> up_bias;               // (d_ff)
  PackedWeight down;                        // (width, d_ff)
  std::vector<float> down_bias;             // (width)
};

class VisionModel {
 public:
  // Loads a mmproj GGUF file. Throws ModelLoadError when the file is not a Gemma 3 vision
  // projector, a size is inconsistent or a tensor is missing or has another shape.
  VisionModel(const std::string& path, Precision precision);

  const VisionConfig& config() const { return config_; }
  Precision precision() const { return precision_; }
  const GGUFFile& file() const { return *file_; }

  // Encodes one image. pixels: (3, image_size, image_size) float32, already resized, rescaled
  // and normalised (channel-major, as transformers' pixel_values). Writes the projected soft
  // tokens (n_tokens, projection_dim) to out and, when tower_out is not null, the encoder's
  // output after its final LayerNorm (n_patches, width).
  void encode(const float* pixels, float* out, ThreadPool& pool, float* tower_out = nullptr) const;

  // Bytes of weight data one encode() reads.
  int64_t weight_bytes() const;
  // One line per distinct weight layout, as Model::layout_summary().
  std::vector<std::string> layout_summary() const;

 private:
  // Buffers of one attention call, allocated once per encode() and reused by every layer.
  struct AttentionScratch {
    std::vector<float> keys;     // per head: K_h (n_patches, head_dim) as sgemm panels
    std::vector<float> values;   // per head: V_h^T (head_dim, n_patches) as sgemm panels
    std::vector<float> queries;  // per head: Q_h (n_patches, head_dim) scaled by 1 / sqrt(head_dim)
  };
  AttentionScratch make_attention_scratch() const;
  void attention(const float* q, const float* k, const float* v, float* out, AttentionScratch& scratch,
                 ThreadPool& pool) const;

  std::unique_ptr<GGUFFile> file_;
  VisionConfig config_;
  Precision precision_;
  PackedWeight patch_embedding_;               // (width, 3 * patch_size^2), columns (channel, y, x)
  std::vector<float> patch_bias_;              // (width)
  std::vector<float> position_embedding_;      // (n_patches, width)
  std::vector<VisionLayerWeights> layers_;
  std::vector<float> post_norm_weight_, post_norm_bias_;  // (width)
  std::vector<float> soft_norm_weight_;        // (width) RMSNorm multiplier, Gemma's 1 + w
  PackedWeight projection_;                    // (projection_dim, width)
};

}  // namespace g3e
