// Text generation on one Context: prefill that reuses the longest cached prefix, sampling,
// stop conditions (EOS, <end_of_turn>, stop strings, a token limit) and streaming of whole
// UTF-8 characters. The C API runs on it; the Python package has its own loop in model.py
// with the same rules.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model.h"
#include "sampling.h"

namespace g3e {

enum class FinishReason {
  kStop,       // EOS, <end_of_turn> or a stop string
  kLength,     // max_tokens reached or the context is full
  kCancelled,  // the token callback returned false
};

const char* finish_reason_name(FinishReason reason);

struct GenerateOptions {
  int64_t max_tokens = 128;  // completion tokens; 0 generates until the context is full
  SamplingParams sampling;
  // UTF-8 stop strings: the text ends before the first occurrence of any of them. Text that
  // could be the start of a stop string is held back until it is known not to be one.
  std::vector<std::string> stop;
};

struct GenerateResult {
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prompt tokens reused from the cache, not recomputed
  int64_t completion_tokens = 0;     // sampled tokens, the stop token (EOS, <end_of_turn>) excluded
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<int32_t> tokens;       // the completion_tokens ids
};

// Receives each completion token with the text that became final with it (whole UTF-8
// characters, possibly empty). At the end it receives token -1 with the text still held back,
// unless that text is empty or generation was cancelled. Returning false stops generation
// after this token.
using TokenCallback = std::function<bool(int32_t token, const std::string& text)>;

// One conversation with a model: a KV cache and the tokens it holds.
class Generator {
 public:
  Generator(const Model& model, const ContextOptions& options);

  // Generates a continuation of `prompt` (token ids, BOS included when wanted). Throws
  // InvalidArgument for an empty prompt, an id outside the vocabulary, a prompt that leaves no
  // room to generate in n_ctx, or invalid sampling options. An exception thrown by on_token
  // propagates; the cache stays consistent with cached_tokens().
  // inputs, when not null, carries image soft-token embeddings for the prompt (indices into
  // prompt); the cache is reused only up to the first replaced token.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                          const TokenCallback& on_token, const EvalInputs* inputs = nullptr);

  // Forgets the cached tokens, so the next prompt is computed from scratch.
  void reset();

  const Model& model() const { return context_.model(); }
  const Context& context() const { return context_; }
  // Tokens whose keys and values the cache holds, in order; -1 for an image soft token.
  const std::vector<int32_t>& cached_tokens() const { return cached_; }

 private:
  // Keeps the longest cached prefix of prompt (never the whole prompt: the last token is
  // evaluated again for its logits) and returns its length.
  int64_t reuse_prefix(const std::vector<int32_t>& prompt);
  // Appends tokens to the cache and leaves the last token's logits in logits_. inputs, when
  // not null, indexes the same n tokens.
  void eval_tokens(const int32_t* tokens, int64_t n, const EvalInputs* inputs = nullptr);

  Context context_;
  // Cache entry of a position whose embedding came from EvalInputs (an image soft token):
  // such a position is never reused, because its id does not identify the image.
  static constexpr int32_t kReplacedToken = -1;
  std::vector<int32_t> cached_;
  std::vector<float> logits_;  // (vocab)
};

}  // namespace g3e
