// The C API (include/gemma3_edge.h) over the C++ core. Every entry point catches all
// exceptions and maps them to a status code plus a thread-local message.
#include "gemma3_edge.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "errors.h"
#include "generate.h"
#include "image_preprocess.h"
#include "log.h"
#include "model.h"
#include "vision.h"

struct gemma3_edge_model {
  std::unique_ptr<g3e::Model> model;
  std::unique_ptr<g3e::VisionModel> vision;  // null for a text-only load
};

struct gemma3_edge_session {
  std::unique_ptr<g3e::Generator> generator;
  const gemma3_edge_model* model = nullptr;
  // Soft tokens (n_tokens, d_model) of the images added for the next prompt, in order.
  std::vector<std::vector<float>> images;
  std::unique_ptr<g3e::ThreadPool> vision_pool;  // created by the first add_image
};

namespace {

thread_local std::string g_last_error;

gemma3_edge_status fail(gemma3_edge_status status, const char* message) noexcept {
  try {
    g_last_error = message;
  } catch (...) {
    g_last_error.clear();  // no memory for the message, but the status still names the failure
  }
  return status;
}

// Runs fn (which returns a status) with the last error cleared, and turns every exception
// into a status: ModelLoadError, std::invalid_argument (g3e::InvalidArgument included) and
// std::bad_alloc get their own codes, anything else is INTERNAL.
template <typename Fn>
gemma3_edge_status guarded(Fn&& fn) noexcept {
  g_last_error.clear();
  try {
    return fn();
  } catch (const g3e::ModelLoadError& e) {
    return fail(GEMMA3_EDGE_ERROR_MODEL_LOAD, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(GEMMA3_EDGE_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(GEMMA3_EDGE_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(GEMMA3_EDGE_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(GEMMA3_EDGE_ERROR_INTERNAL, "unknown exception inside gemma3-edge");
  }
}

gemma3_edge_status invalid(const std::string& message) {
  return fail(GEMMA3_EDGE_ERROR_INVALID_ARGUMENT, message.c_str());
}

// The C log callback behind the core's log (g3e::log calls log_trampoline under its lock).
struct LogTarget {
  gemma3_edge_log_callback callback = nullptr;
  void* user_data = nullptr;
};
std::mutex g_log_mutex;
LogTarget g_log_target;

void log_trampoline(g3e::LogLevel level, const char* message, void*) {
  LogTarget target;
  {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    target = g_log_target;
  }
  if (target.callback != nullptr) {
    target.callback(static_cast<gemma3_edge_log_level>(level), message, target.user_data);
  }
}

int online_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

g3e::GenerateOptions generate_options(const gemma3_edge_generate_params& p) {
  if (p.max_tokens < 0) {
    throw g3e::InvalidArgument("max_tokens must be >= 0 (0 generates until a stop or a full context), got " +
                               std::to_string(p.max_tokens));
  }
  if (p.n_stop > 0 && p.stop == nullptr) {
    throw g3e::InvalidArgument("stop is NULL but n_stop is " + std::to_string(p.n_stop) +
                               "; pass n_stop = 0 or an array of n_stop strings");
  }
  g3e::GenerateOptions options;
  options.max_tokens = p.max_tokens;
  const gemma3_edge_sampling_params& s = p.sampling;
  options.sampling.temperature = s.temperature;
  options.sampling.top_k = s.top_k;
  options.sampling.top_p = s.top_p;
  options.sampling.min_p = s.min_p;
  options.sampling.repeat_penalty = s.repeat_penalty;
  options.sampling.repeat_last_n = s.repeat_last_n;
  options.sampling.seed = s.seed;
  if (s.seed == GEMMA3_EDGE_SEED_RANDOM) {
    std::random_device device;
    options.sampling.seed = (static_cast<uint64_t>(device()) << 32) ^ device();
  }
  for (size_t i = 0; i < p.n_stop; ++i) {
    if (p.stop[i] == nullptr) {
      throw g3e::InvalidArgument("stop[" + std::to_string(i) + "] is NULL; every stop string must be a C string");
    }
    options.stop.emplace_back(p.stop[i]);
  }
  return options;
}

// Token ids of a text prompt with images, and the soft tokens that replace its image tokens.
struct ImagePrompt {
  std::vector<int32_t> ids;
  std::vector<float> embeddings;  // (ids.size(), d_model), zero outside the images
  std::vector<uint8_t> replace;   // 1 at every image soft token
  std::vector<std::pair<int64_t, int64_t>> spans;  // [begin, end) of each image's soft tokens

  // Points into this object, so it must outlive the returned inputs.
  g3e::EvalInputs eval_inputs() const {
    g3e::EvalInputs inputs;
    inputs.embeddings = embeddings.data();
    inputs.replace = replace.data();
    inputs.bidirectional_spans = spans;
    return inputs;
  }
};

int32_t control_token_id(const g3e::Model& model, const char* piece) {
  const std::vector<int32_t> ids = model.tokenizer().encode(piece, false, true);
  return ids.size() == 1 ? ids[0] : -1;
}

// Lays out a prompt as the Python package's vision.split_prompt and build_prompt do, which is
// Gemma 3's processor layout without Pan & Scan. Each "<start_of_image>" marker of the text, or
// the start of a text without markers, becomes "\n\n<start_of_image>", the image's soft
// tokens and "<end_of_image>\n\n". Text between images is tokenized with those newlines.
ImagePrompt build_image_prompt(const g3e::Model& model, const std::string& text,
                               const std::vector<std::vector<float>>& images, bool add_bos, bool parse_special) {
  static const std::string kMarker = "<start_of_image>";
  std::vector<std::string> pieces;
  size_t start = 0;
  for (size_t at; (at = text.find(kMarker, start)) != std::string::npos; start = at + kMarker.size()) {
    pieces.push_back(text.substr(start, at - start));
  }
  pieces.push_back(text.substr(start));
  const size_t markers = pieces.size() - 1;
  if (markers == 0) {
    pieces.assign(images.size(), std::string());
    pieces.push_back(text);
  } else if (markers != images.size()) {
    throw g3e::InvalidArgument("the prompt has " + std::to_string(markers) + " <start_of_image> markers but " +
                               std::to_string(images.size()) +
                               " images were added; put one marker where each image goes, or none to put all "
                               "images at the start");
  }
  const int32_t start_id = control_token_id(model, "<start_of_image>");
  const int32_t end_id = control_token_id(model, "<end_of_image>");
  int32_t placeholder = control_token_id(model, "<image_soft_token>");
  if (placeholder < 0) placeholder = start_id;
  if (start_id < 0 || end_id < 0) {
    throw g3e::InvalidArgument("the model's vocabulary has no <start_of_image> or <end_of_image> token, so it "
                               "cannot take images");
  }

  const int64_t d_model = model.config().d_model;
  ImagePrompt prompt;
  if (add_bos) prompt.ids.push_back(model.config().bos_id);
  std::vector<std::pair<int64_t, int64_t>>& spans = prompt.spans;
  auto add_text = [&](const std::string& piece) {
    if (piece.empty()) return;
    const std::vector<int32_t> ids = model.tokenizer().encode(piece, false, parse_special);
    prompt.ids.insert(prompt.ids.end(), ids.begin(), ids.end());
  };
  std::string pending = pieces[0];
  for (size_t i = 0; i < images.size(); ++i) {
    add_text(pending + "\n\n");
    prompt.ids.push_back(start_id);
    const int64_t n_tokens = static_cast<int64_t>(images[i].size()) / d_model;
    spans.emplace_back(static_cast<int64_t>(prompt.ids.size()), static_cast<int64_t>(prompt.ids.size()) + n_tokens);
    prompt.ids.insert(prompt.ids.end(), static_cast<size_t>(n_tokens), placeholder);
    prompt.ids.push_back(end_id);
    pending = "\n\n" + pieces[i + 1];
  }
  add_text(pending);

  prompt.embeddings.assign(prompt.ids.size() * static_cast<size_t>(d_model), 0.0f);
  prompt.replace.assign(prompt.ids.size(), 0);
  for (size_t i = 0; i < images.size(); ++i) {
    const auto [begin, end] = spans[i];
    std::copy(images[i].begin(), images[i].end(), prompt.embeddings.begin() + begin * d_model);
    std::fill(prompt.replace.begin() + begin, prompt.replace.begin() + end, 1);
  }
  return prompt;
}

gemma3_edge_status run_generation(gemma3_edge_session* session, const std::vector<int32_t>& prompt,
                                  const g3e::GenerateOptions& options, gemma3_edge_token_callback callback,
                                  void* user_data, gemma3_edge_generate_result* result,
                                  const g3e::EvalInputs* inputs = nullptr) {
  const g3e::TokenCallback on_token = [&](int32_t token, const std::string& text) {
    if (callback == nullptr) return true;
    return callback(token, text.c_str(), text.size(), user_data) == 0;
  };
  const g3e::GenerateResult r = session->generator->generate(prompt, options, on_token, inputs);
  if (result != nullptr) {
    result->prompt_tokens = static_cast<int32_t>(r.prompt_tokens);
    result->cached_prompt_tokens = static_cast<int32_t>(r.cached_prompt_tokens);
    result->completion_tokens = static_cast<int32_t>(r.completion_tokens);
    switch (r.finish_reason) {
      case g3e::FinishReason::kStop: result->finish_reason = GEMMA3_EDGE_FINISH_STOP; break;
      case g3e::FinishReason::kLength: result->finish_reason = GEMMA3_EDGE_FINISH_LENGTH; break;
      case g3e::FinishReason::kCancelled: result->finish_reason = GEMMA3_EDGE_FINISH_CANCELLED; break;
    }
  }
  return GEMMA3_EDGE_OK;
}

}  // namespace

extern "C" {

const char* gemma3_edge_status_string(gemma3_edge_status status) {
  // C callers may pass any int, and reading a value outside the enum's range as the enum type
  // is undefined in C++, so the switch reads the bytes as an int.
  static_assert(sizeof(gemma3_edge_status) == sizeof(int), "gemma3_edge_status is passed as a C int");
  int code;
  std::memcpy(&code, &status, sizeof code);
  switch (code) {
    case GEMMA3_EDGE_OK: return "ok";
    case GEMMA3_EDGE_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case GEMMA3_EDGE_ERROR_MODEL_LOAD: return "model load failed";
    case GEMMA3_EDGE_ERROR_OUT_OF_MEMORY: return "out of memory";
    case GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL: return "buffer too small";
    case GEMMA3_EDGE_ERROR_NO_VISION_TOWER: return "model has no vision tower";
    case GEMMA3_EDGE_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* gemma3_edge_last_error(void) { return g_last_error.c_str(); }

const char* gemma3_edge_version(void) { return GEMMA3_EDGE_VERSION_STRING; }

void gemma3_edge_set_log_callback(gemma3_edge_log_callback callback, void* user_data) {
  {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_target.callback = callback;
    g_log_target.user_data = user_data;
  }
  g3e::set_log_callback(callback != nullptr ? log_trampoline : nullptr, nullptr);
}

void gemma3_edge_set_log_level(gemma3_edge_log_level level) {
  // Callers may pass any int; reading it as the enum would be undefined (UBSan).
  int value;
  std::memcpy(&value, &level, sizeof value);
  const int clamped = std::clamp(value, 0, static_cast<int>(g3e::LogLevel::kNone));
  g3e::set_log_level(static_cast<g3e::LogLevel>(clamped));
}

gemma3_edge_model_params gemma3_edge_model_params_default(void) {
  gemma3_edge_model_params params;
  params.precision = GEMMA3_EDGE_PRECISION_QUANTIZED;
  return params;
}

gemma3_edge_status gemma3_edge_model_load(const char* path, const gemma3_edge_model_params* params,
                                          gemma3_edge_model** out_model) {
  return gemma3_edge_model_load_with_mmproj(path, nullptr, params, out_model);
}

gemma3_edge_status gemma3_edge_model_load_with_mmproj(const char* path, const char* mmproj_path,
                                                      const gemma3_edge_model_params* params,
                                                      gemma3_edge_model** out_model) {
  return guarded([&] {
    if (out_model == nullptr) return invalid("out_model is NULL; pass the address of a gemma3_edge_model*");
    *out_model = nullptr;
    if (path == nullptr) return invalid("path is NULL; pass the path of a Gemma 3 GGUF file");
    const gemma3_edge_model_params p = params != nullptr ? *params : gemma3_edge_model_params_default();
    g3e::Precision precision;
    int precision_code;  // read as an int, as in gemma3_edge_status_string()
    std::memcpy(&precision_code, &p.precision, sizeof precision_code);
    switch (precision_code) {
      case GEMMA3_EDGE_PRECISION_QUANTIZED: precision = g3e::Precision::kQuantized; break;
      case GEMMA3_EDGE_PRECISION_F32: precision = g3e::Precision::kF32; break;
      default:
        return invalid("precision " + std::to_string(precision_code) +
                       " is invalid; use GEMMA3_EDGE_PRECISION_QUANTIZED or GEMMA3_EDGE_PRECISION_F32");
    }
    auto model = std::make_unique<gemma3_edge_model>();
    model->model = std::make_unique<g3e::Model>(path, precision);
    if (mmproj_path != nullptr) {
      model->vision = std::make_unique<g3e::VisionModel>(mmproj_path, precision);
      const int64_t projection_dim = model->vision->config().projection_dim;
      const int64_t d_model = model->model->config().d_model;
      if (projection_dim != d_model) {
        throw g3e::ModelLoadError(std::string(mmproj_path) + ": the vision projector maps images to width " +
                                  std::to_string(projection_dim) + ", but " + path + " has d_model " +
                                  std::to_string(d_model) + "; use the mmproj file made for this model");
      }
    }
    *out_model = model.release();
    return GEMMA3_EDGE_OK;
  });
}

void gemma3_edge_model_free(gemma3_edge_model* model) { delete model; }

int32_t gemma3_edge_model_vocab_size(const gemma3_edge_model* model) {
  return model != nullptr ? static_cast<int32_t>(model->model->config().vocab_size) : -1;
}

int32_t gemma3_edge_model_max_context(const gemma3_edge_model* model) {
  if (model == nullptr) return -1;
  const int64_t max_context = model->model->config().max_context;
  return static_cast<int32_t>(std::min<int64_t>(max_context, INT32_MAX));
}

int32_t gemma3_edge_model_bos_token(const gemma3_edge_model* model) {
  return model != nullptr ? model->model->config().bos_id : -1;
}

int32_t gemma3_edge_model_eos_token(const gemma3_edge_model* model) {
  return model != nullptr ? model->model->config().eos_id : -1;
}

int32_t gemma3_edge_model_end_of_turn_token(const gemma3_edge_model* model) {
  return model != nullptr ? model->model->config().end_of_turn_id : -1;
}

int gemma3_edge_model_has_vision(const gemma3_edge_model* model) {
  return model != nullptr && model->vision != nullptr ? 1 : 0;
}

gemma3_edge_status gemma3_edge_tokenize(const gemma3_edge_model* model, const char* text, size_t text_len,
                                        int add_bos, int parse_special, int32_t* tokens, size_t capacity,
                                        size_t* n_tokens) {
  return guarded([&] {
    if (model == nullptr) return invalid("model is NULL");
    if (n_tokens == nullptr) return invalid("n_tokens is NULL; pass the address of a size_t");
    if (text == nullptr && text_len > 0) {
      return invalid("text is NULL but text_len is " + std::to_string(text_len));
    }
    if (tokens == nullptr && capacity > 0) {
      return invalid("tokens is NULL but capacity is " + std::to_string(capacity));
    }
    const std::string_view view = text_len > 0 ? std::string_view(text, text_len) : std::string_view();
    const std::vector<int32_t> ids = model->model->tokenizer().encode(view, add_bos != 0, parse_special != 0);
    *n_tokens = ids.size();
    if (ids.size() > capacity) {
      return fail(GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL,
                  ("the text has " + std::to_string(ids.size()) + " tokens but capacity is " +
                   std::to_string(capacity) + "; call again with a buffer of *n_tokens ids")
                      .c_str());
    }
    std::copy(ids.begin(), ids.end(), tokens);
    return GEMMA3_EDGE_OK;
  });
}

gemma3_edge_status gemma3_edge_detokenize(const gemma3_edge_model* model, const int32_t* tokens, size_t n_tokens,
                                          char* text, size_t capacity, size_t* text_len) {
  return guarded([&] {
    if (model == nullptr) return invalid("model is NULL");
    if (text_len == nullptr) return invalid("text_len is NULL; pass the address of a size_t");
    if (tokens == nullptr && n_tokens > 0) {
      return invalid("tokens is NULL but n_tokens is " + std::to_string(n_tokens));
    }
    if (text == nullptr && capacity > 0) return invalid("text is NULL but capacity is " + std::to_string(capacity));
    const int32_t vocab = static_cast<int32_t>(model->model->config().vocab_size);
    for (size_t i = 0; i < n_tokens; ++i) {
      if (tokens[i] < 0 || tokens[i] >= vocab) {
        return invalid("tokens[" + std::to_string(i) + "] = " + std::to_string(tokens[i]) +
                       " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")");
      }
    }
    const std::string bytes = model->model->tokenizer().decode(std::vector<int32_t>(tokens, tokens + n_tokens));
    *text_len = bytes.size();
    if (bytes.size() + 1 > capacity) {
      return fail(GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL,
                  ("the text has " + std::to_string(bytes.size()) + " bytes, which with the NUL need capacity " +
                   std::to_string(bytes.size() + 1) + ", got " + std::to_string(capacity))
                      .c_str());
    }
    std::memcpy(text, bytes.data(), bytes.size());
    text[bytes.size()] = '\0';
    return GEMMA3_EDGE_OK;
  });
}

gemma3_edge_session_params gemma3_edge_session_params_default(void) {
  const g3e::ContextOptions defaults;
  gemma3_edge_session_params params;
  params.n_ctx = static_cast<int32_t>(defaults.n_ctx);
  params.n_batch = static_cast<int32_t>(defaults.n_batch);
  params.n_threads = 0;
  params.kv_type = GEMMA3_EDGE_KV_F32;
  return params;
}

gemma3_edge_status gemma3_edge_session_create(const gemma3_edge_model* model, const gemma3_edge_session_params* params,
                                              gemma3_edge_session** out_session) {
  return guarded([&] {
    if (out_session == nullptr) return invalid("out_session is NULL; pass the address of a gemma3_edge_session*");
    *out_session = nullptr;
    if (model == nullptr) return invalid("model is NULL; load one with gemma3_edge_model_load()");
    const gemma3_edge_session_params p = params != nullptr ? *params : gemma3_edge_session_params_default();
    g3e::ContextOptions options;
    options.n_ctx = p.n_ctx;
    options.n_batch = p.n_batch;
    if (p.n_threads < 0) {
      return invalid("n_threads must be >= 1, or 0 for one per CPU, got " + std::to_string(p.n_threads));
    }
    options.n_threads = p.n_threads == 0 ? online_cpus() : p.n_threads;
    int kv_type_code;  // read as an int, as in gemma3_edge_status_string()
    std::memcpy(&kv_type_code, &p.kv_type, sizeof kv_type_code);
    switch (kv_type_code) {
      case GEMMA3_EDGE_KV_F32: options.kv_type = g3e::KVType::kF32; break;
      case GEMMA3_EDGE_KV_F16: options.kv_type = g3e::KVType::kF16; break;
      case GEMMA3_EDGE_KV_INT8: options.kv_type = g3e::KVType::kInt8; break;
      default:
        return invalid("kv_type " + std::to_string(kv_type_code) +
                       " is invalid; use GEMMA3_EDGE_KV_F32, GEMMA3_EDGE_KV_F16 or GEMMA3_EDGE_KV_INT8");
    }
    if (model->vision != nullptr && options.n_batch < model->vision->config().n_tokens) {
      return invalid("n_batch " + std::to_string(options.n_batch) + " is smaller than one image (" +
                     std::to_string(model->vision->config().n_tokens) +
                     " tokens), whose tokens must be evaluated together; pass n_batch >= " +
                     std::to_string(model->vision->config().n_tokens));
    }
    auto session = std::make_unique<gemma3_edge_session>();
    session->generator = std::make_unique<g3e::Generator>(*model->model, options);
    session->model = model;
    *out_session = session.release();
    return GEMMA3_EDGE_OK;
  });
}

void gemma3_edge_session_free(gemma3_edge_session* session) { delete session; }

void gemma3_edge_session_reset(gemma3_edge_session* session) {
  if (session == nullptr) return;
  session->generator->reset();
  session->images.clear();
}

int32_t gemma3_edge_session_n_past(const gemma3_edge_session* session) {
  return session != nullptr ? static_cast<int32_t>(session->generator->context().n_past()) : -1;
}

int64_t gemma3_edge_session_kv_bytes(const gemma3_edge_session* session) {
  return session != nullptr ? session->generator->context().kv_bytes() : -1;
}

gemma3_edge_status gemma3_edge_session_add_image(gemma3_edge_session* session, const uint8_t* rgb, int32_t width,
                                                 int32_t height, int32_t stride_bytes) {
  return guarded([&] {
    if (session == nullptr) return invalid("session is NULL");
    if (rgb == nullptr) return invalid("rgb is NULL; pass height rows of width RGB pixels");
    if (width < 1 || height < 1) {
      return invalid("image size " + std::to_string(width) + "x" + std::to_string(height) +
                     " is invalid; width and height must be >= 1");
    }
    // The resize's first pass stores height x (input size) pixels: 2.7 GB for a 1 x 1,000,000
    // image at 896. This bound keeps it under 50 MB.
    constexpr int32_t kMaxImageSide = 16384;
    if (width > kMaxImageSide || height > kMaxImageSide) {
      return invalid("image size " + std::to_string(width) + "x" + std::to_string(height) + " exceeds " +
                     std::to_string(kMaxImageSide) + " pixels on a side; scale the image down first");
    }
    if (stride_bytes / 3 < width) {
      return invalid("stride_bytes " + std::to_string(stride_bytes) + " is less than 3 * width = " +
                     std::to_string(3 * static_cast<int64_t>(width)));
    }
    const g3e::VisionModel* vision = session->model->vision.get();
    if (vision == nullptr) {
      const std::string& name = session->generator->model().config().name;
      return fail(GEMMA3_EDGE_ERROR_NO_VISION_TOWER,
                  ("model '" + name +
                   "' was loaded without a vision tower, so images cannot be used; load it with "
                   "gemma3_edge_model_load_with_mmproj() and its mmproj file")
                      .c_str());
    }
    const g3e::VisionConfig& c = vision->config();
    const std::vector<float> pixels = g3e::preprocess_image(rgb, width, height, stride_bytes, c);
    if (session->vision_pool == nullptr) {
      session->vision_pool = std::make_unique<g3e::ThreadPool>(session->generator->context().options().n_threads);
    }
    std::vector<float> soft_tokens(static_cast<size_t>(c.n_tokens * c.projection_dim));
    vision->encode(pixels.data(), soft_tokens.data(), *session->vision_pool);
    session->images.push_back(std::move(soft_tokens));
    return GEMMA3_EDGE_OK;
  });
}

gemma3_edge_sampling_params gemma3_edge_sampling_params_default(void) {
  const g3e::SamplingParams defaults;
  gemma3_edge_sampling_params params;
  params.temperature = defaults.temperature;
  params.top_k = defaults.top_k;
  params.top_p = defaults.top_p;
  params.min_p = defaults.min_p;
  params.repeat_penalty = defaults.repeat_penalty;
  params.repeat_last_n = defaults.repeat_last_n;
  params.seed = defaults.seed;
  return params;
}

gemma3_edge_generate_params gemma3_edge_generate_params_default(void) {
  gemma3_edge_generate_params params;
  params.sampling = gemma3_edge_sampling_params_default();
  params.max_tokens = 128;
  params.add_bos = 1;
  params.parse_special = 0;
  params.stop = nullptr;
  params.n_stop = 0;
  return params;
}

gemma3_edge_status gemma3_edge_generate(gemma3_edge_session* session, const char* prompt,
                                        const gemma3_edge_generate_params* params,
                                        gemma3_edge_token_callback callback, void* user_data,
                                        gemma3_edge_generate_result* result) {
  return guarded([&] {
    if (session == nullptr) return invalid("session is NULL; create one with gemma3_edge_session_create()");
    if (prompt == nullptr) return invalid("prompt is NULL; pass a NUL-terminated UTF-8 string");
    const gemma3_edge_generate_params p = params != nullptr ? *params : gemma3_edge_generate_params_default();
    // The added images belong to this prompt whether or not generation succeeds.
    const std::vector<std::vector<float>> images = std::move(session->images);
    session->images.clear();
    const g3e::GenerateOptions options = generate_options(p);
    const g3e::Model& model = session->generator->model();
    if (!images.empty()) {
      const ImagePrompt image_prompt = build_image_prompt(model, prompt, images, p.add_bos != 0, p.parse_special != 0);
      const g3e::EvalInputs inputs = image_prompt.eval_inputs();
      return run_generation(session, image_prompt.ids, options, callback, user_data, result, &inputs);
    }
    const std::vector<int32_t> ids = model.tokenizer().encode(prompt, p.add_bos != 0, p.parse_special != 0);
    return run_generation(session, ids, options, callback, user_data, result);
  });
}

gemma3_edge_status gemma3_edge_generate_tokens(gemma3_edge_session* session, const int32_t* tokens, size_t n_tokens,
                                               const gemma3_edge_generate_params* params,
                                               gemma3_edge_token_callback callback, void* user_data,
                                               gemma3_edge_generate_result* result) {
  return guarded([&] {
    if (session == nullptr) return invalid("session is NULL; create one with gemma3_edge_session_create()");
    if (tokens == nullptr && n_tokens > 0) return invalid("tokens is NULL but n_tokens is " + std::to_string(n_tokens));
    if (!session->images.empty()) {
      const size_t n_images = session->images.size();
      session->images.clear();
      return invalid(std::to_string(n_images) +
                     " added images were dropped: a prompt of token ids cannot place images; pass a text prompt "
                     "to gemma3_edge_generate()");
    }
    const gemma3_edge_generate_params p = params != nullptr ? *params : gemma3_edge_generate_params_default();
    const g3e::GenerateOptions options = generate_options(p);
    const std::vector<int32_t> ids(tokens, tokens + n_tokens);
    return run_generation(session, ids, options, callback, user_data, result);
  });
}

}  // extern "C"
