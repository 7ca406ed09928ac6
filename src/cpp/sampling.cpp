#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

#include "errors.h"

namespace g3e {

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    throw InvalidArgument("temperature must be a finite number >= 0, got " + std::to_string(p.temperature));
  }
  if (p.top_k < 0) throw InvalidArgument("top_k must be >= 0 (0 disables it), got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    throw InvalidArgument("top_p must be in (0, 1], got " + std::to_string(p.top_p));
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    throw InvalidArgument("min_p must be in [0, 1], got " + std::to_string(p.min_p));
  }
  if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) {
    throw InvalidArgument("repeat_penalty must be a finite number > 0 (1 disables it), got " +
                          std::to_string(p.repeat_penalty));
  }
  if (p.repeat_last_n < 0) {
    throw InvalidArgument("repeat_last_n must be >= 0, got " + std::to_string(p.repeat_last_n));
  }
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { validate(params_); }

int32_t Sampler::sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  for (int64_t i = 0; i < n_vocab; ++i) {
    if (std::isnan(logits[i])) {
      // Any token drawn from NaN logits would be meaningless (docs/reliability.md).
      throw std::domain_error("the logits contain NaN (token " + std::to_string(i) +
                              "): the model's weights overflow float32 on this input, so this model file "
                              "cannot be used for generation");
    }
  }
  candidates_.resize(n_vocab);
  for (int64_t i = 0; i < n_vocab; ++i) candidates_[i] = {logits[i], static_cast<int32_t>(i)};

  // Repetition penalty as in llama.cpp and CTRL: divide positive logits, multiply negative ones.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    std::unordered_set<int32_t> seen;
    int64_t start = std::max<int64_t>(0, static_cast<int64_t>(history.size()) - params_.repeat_last_n);
    for (size_t i = start; i < history.size(); ++i) {
      int32_t id = history[i];
      if (id < 0 || id >= n_vocab || !seen.insert(id).second) continue;
      float& v = candidates_[id].first;
      v = v > 0 ? v / params_.repeat_penalty : v * params_.repeat_penalty;
    }
  }

  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (params_.temperature == 0.0f) {
    return std::min_element(candidates_.begin(), candidates_.end(), by_logit)->second;
  }

  // Top-k first (partial sort), then softmax at the temperature, min-p, top-p, and a draw.
  int64_t k = params_.top_k > 0 ? std::min<int64_t>(params_.top_k, n_vocab) : n_vocab;
  std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), by_logit);
  candidates_.resize(k);
  const float max_logit = candidates_[0].first;
  double sum = 0.0;
  for (auto& c : candidates_) {
    c.first = std::exp((c.first - max_logit) / params_.temperature);
    sum += c.first;
  }
  for (auto& c : candidates_) c.first = static_cast<float>(c.first / sum);

  if (params_.min_p > 0.0f) {
    const float threshold = params_.min_p * candidates_[0].first;
    size_t keep = 1;
    while (keep < candidates_.size() && candidates_[keep].first >= threshold) ++keep;
    candidates_.resize(keep);
  }
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < candidates_.size()) {
      cumulative += candidates_[keep].first;
      ++keep;
      if (cumulative >= params_.top_p) break;
    }
    candidates_.resize(keep);
  }

  double total = 0.0;
  for (auto& c : candidates_) total += c.first;
  std::uniform_real_distribution<double> uniform(0.0, total);
  double r = uniform(rng_);
  for (auto& c : candidates_) {
    r -= c.first;
    if (r <= 0.0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace g3e
