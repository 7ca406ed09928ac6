#include "generate.h"

#include <algorithm>
#include <string>

#include "errors.h"
#include "tokenizer.h"

namespace g3e {

namespace {

constexpr size_t kNotFound = std::string::npos;

// Byte offset of the earliest occurrence of any stop string in text, or kNotFound.
// StreamingDecoder emits whole UTF-8 characters, so a byte match of a valid UTF-8 stop string
// is a character match.
size_t find_stop(const std::string& text, const std::vector<std::string>& stops) {
  size_t first = kNotFound;
  for (const std::string& stop : stops) first = std::min(first, text.find(stop));
  return first;
}

// Length of the prefix of text that cannot be part of a stop string: text minus its longest
// suffix that is a proper prefix of some stop string. That suffix starts where a stop string
// starts, so the split falls between UTF-8 characters.
size_t safe_prefix_length(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& stop : stops) {
    for (size_t k = std::min(stop.size() - 1, text.size()); k > hold; --k) {
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return text.size() - hold;
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "";
}

Generator::Generator(const Model& model, const ContextOptions& options)
    : context_(model, options), logits_(static_cast<size_t>(model.config().vocab_size)) {}

void Generator::reset() {
  cached_.clear();
  context_.reset();
}

int64_t Generator::reuse_prefix(const std::vector<int32_t>& prompt) {
  const size_t limit = std::min(cached_.size(), prompt.size() - 1);
  size_t common = 0;
  while (common < limit && cached_[common] == prompt[common] && prompt[common] != kReplacedToken) ++common;
  if (common > 0 && context_.truncate(static_cast<int64_t>(common))) {
    cached_.resize(common);
    return static_cast<int64_t>(common);
  }
  reset();
  return 0;
}

void Generator::eval_tokens(const int32_t* tokens, int64_t n, const EvalInputs* inputs) {
  try {
    context_.eval(tokens, n, n - 1, logits_.data(), inputs);
  } catch (...) {
    // The cache may hold part of the tokens; start afresh next time.
    reset();
    throw;
  }
  for (int64_t i = 0; i < n; ++i) {
    const bool replaced = inputs != nullptr && inputs->replace != nullptr && inputs->replace[i] != 0;
    cached_.push_back(replaced ? kReplacedToken : tokens[i]);
  }
}

GenerateResult Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                   const TokenCallback& on_token, const EvalInputs* inputs) {
  const Model& m = model();
  const ModelConfig& config = m.config();
  const int64_t n_ctx = context_.options().n_ctx;
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  if (prompt.empty()) throw InvalidArgument("the prompt is empty; pass text or at least one token id");
  for (int32_t id : prompt) {
    if (id < 0 || id >= config.vocab_size) {
      throw InvalidArgument("prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                            std::to_string(config.vocab_size - 1) + ")");
    }
  }
  if (n_prompt >= n_ctx) {
    throw InvalidArgument("the prompt has " + std::to_string(n_prompt) +
                          " tokens, which leaves no room to generate in n_ctx " + std::to_string(n_ctx) +
                          "; shorten the prompt or create the session with a larger n_ctx");
  }
  if (options.max_tokens < 0) {
    throw InvalidArgument("max_tokens must be >= 0 (0 generates until the context is full), got " +
                          std::to_string(options.max_tokens));
  }
  Sampler sampler(options.sampling);  // validates the sampling options
  std::vector<std::string> stops;
  for (const std::string& s : options.stop) {
    if (!s.empty()) stops.push_back(s);
  }

  GenerateResult result;
  result.prompt_tokens = n_prompt;
  // The last sampled token is not evaluated, so prompt + limit tokens fit in n_ctx.
  int64_t limit = n_ctx - n_prompt;
  if (options.max_tokens > 0) limit = std::min(limit, options.max_tokens);

  // A replaced (image) token differs from every cached one, so the reused prefix ends before it.
  std::vector<int32_t> reuse_keys = prompt;
  if (inputs != nullptr && inputs->replace != nullptr) {
    for (int64_t i = 0; i < n_prompt; ++i) {
      if (inputs->replace[i] != 0) reuse_keys[i] = kReplacedToken;
    }
  }
  result.cached_prompt_tokens = reuse_prefix(reuse_keys);
  const int64_t start = result.cached_prompt_tokens;
  if (inputs == nullptr) {
    eval_tokens(prompt.data() + start, n_prompt - start);
  } else {
    // The same inputs shifted to the tokens that are evaluated (spans never start before
    // `start`, because the reused prefix ends before the first replaced token).
    EvalInputs rest;
    if (inputs->embeddings != nullptr) {
      rest.embeddings = inputs->embeddings + start * config.d_model;
      rest.replace = inputs->replace + start;
    }
    for (const auto& [begin, end] : inputs->bidirectional_spans) {
      rest.bidirectional_spans.emplace_back(begin - start, end - start);
    }
    eval_tokens(prompt.data() + start, n_prompt - start, &rest);
  }

  StreamingDecoder decoder(m.tokenizer());
  std::vector<int32_t> history = prompt;  // for the repetition penalty
  std::string pending;                    // decoded text not yet passed to on_token
  bool stop_string_found = false;
  result.finish_reason = FinishReason::kLength;
  while (result.completion_tokens < limit) {
    const int32_t token = sampler.sample(logits_.data(), config.vocab_size, history);
    if (token == config.eos_id || (config.end_of_turn_id >= 0 && token == config.end_of_turn_id)) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    history.push_back(token);
    result.tokens.push_back(token);
    ++result.completion_tokens;

    pending += decoder.push(token);
    std::string text;
    if (stops.empty()) {
      text.swap(pending);
    } else {
      const size_t cut = find_stop(pending, stops);
      if (cut != kNotFound) {
        pending.resize(cut);
        text.swap(pending);
        stop_string_found = true;
      } else {
        const size_t safe = safe_prefix_length(pending, stops);
        text = pending.substr(0, safe);
        pending.erase(0, safe);
      }
    }
    const bool keep_going = on_token(token, text);
    if (stop_string_found) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (!keep_going) {
      result.finish_reason = FinishReason::kCancelled;
      return result;
    }
    if (result.completion_tokens >= limit) break;
    eval_tokens(&token, 1);
  }

  if (!stop_string_found) {
    pending += decoder.flush();
    const size_t cut = stops.empty() ? kNotFound : find_stop(pending, stops);
    if (cut != kNotFound) {
      pending.resize(cut);
      result.finish_reason = FinishReason::kStop;
    }
    if (!pending.empty()) on_token(-1, pending);
  }
  return result;
}

}  // namespace g3e
