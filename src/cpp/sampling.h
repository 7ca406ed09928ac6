// Token sampling from a row of logits: greedy, temperature, top-k, top-p, min-p and repetition
// penalty, with a seeded generator so a seed gives the same tokens on every run.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace g3e {

struct SamplingParams {
  float temperature = 0.8f;     // 0 picks the most likely token (greedy)
  int32_t top_k = 40;           // 0 keeps every token
  float top_p = 0.95f;          // in (0, 1]; 1 keeps every token
  float min_p = 0.05f;          // in [0, 1]; drops tokens below min_p * p(most likely)
  float repeat_penalty = 1.0f;  // > 0; 1 disables it
  int32_t repeat_last_n = 64;   // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

// Throws InvalidArgument naming the first invalid field.
void validate(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks a token from logits[n_vocab]. `history` is the sequence so far (for the penalty).
  int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace g3e
