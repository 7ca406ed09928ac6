// Tests of the C API (include/gemma3_edge.h) through the header alone, so the same file also
// builds against the installed shared library (tests/test_c_api.py does that). Argument
// handling and error codes run without a model. Loading, tokenizing and generation need a
// Gemma 3 GGUF file as argv[1] or in GEMMA3_EDGE_MODEL, and count as skipped without one. Stopping at EOS is tested in tests/test_c_api.py on a model made to emit it.
// Exits non-zero on a failure and ends with "N passed, N failed, N skipped".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "gemma3_edge.h"

namespace {

int g_passed = 0, g_failed = 0, g_skipped = 0;

void check(bool ok, const std::string& description) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s (last error: '%s')\n", description.c_str(), gemma3_edge_last_error());
  }
}

bool contains(const char* text, const char* part) { return std::strstr(text, part) != nullptr; }

// ---- Without a model --------------------------------------------------------------------

void test_version_and_status_strings() {
  check(std::strcmp(gemma3_edge_version(), GEMMA3_EDGE_VERSION_STRING) == 0, "version matches the header");
  const gemma3_edge_status codes[] = {GEMMA3_EDGE_OK,
                                      GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
                                      GEMMA3_EDGE_ERROR_MODEL_LOAD,
                                      GEMMA3_EDGE_ERROR_OUT_OF_MEMORY,
                                      GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL,
                                      GEMMA3_EDGE_ERROR_NO_VISION_TOWER,
                                      GEMMA3_EDGE_ERROR_INTERNAL};
  bool distinct = true;
  for (gemma3_edge_status a : codes) {
    for (gemma3_edge_status b : codes) {
      if (a != b && std::strcmp(gemma3_edge_status_string(a), gemma3_edge_status_string(b)) == 0) distinct = false;
    }
  }
  check(distinct, "every status has its own name");
  check(std::strcmp(gemma3_edge_status_string(static_cast<gemma3_edge_status>(99)), "unknown status") == 0,
        "an unknown status is named 'unknown status'");
}

void test_defaults() {
  const gemma3_edge_sampling_params s = gemma3_edge_sampling_params_default();
  check(s.temperature == 0.8f && s.top_k == 40 && s.top_p == 0.95f && s.min_p == 0.05f && s.repeat_penalty == 1.0f &&
            s.repeat_last_n == 64 && s.seed == 0,
        "sampling defaults are the documented ones");
  const gemma3_edge_generate_params g = gemma3_edge_generate_params_default();
  check(g.max_tokens == 128 && g.add_bos == 1 && g.parse_special == 0 && g.stop == nullptr && g.n_stop == 0 &&
            g.sampling.top_k == 40,
        "generation defaults are the documented ones");
  const gemma3_edge_session_params p = gemma3_edge_session_params_default();
  check(p.n_ctx == 4096 && p.n_batch == 512 && p.n_threads == 0 && p.kv_type == GEMMA3_EDGE_KV_F32,
        "session defaults are the documented ones");
  check(gemma3_edge_model_params_default().precision == GEMMA3_EDGE_PRECISION_QUANTIZED,
        "model default precision is quantized");
}

void test_invalid_arguments_without_model() {
  gemma3_edge_model* model = reinterpret_cast<gemma3_edge_model*>(&g_passed);  // must be overwritten
  check(gemma3_edge_model_load(nullptr, nullptr, &model) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT && model == nullptr,
        "model_load rejects a NULL path and stores NULL");
  check(contains(gemma3_edge_last_error(), "path"), "the NULL path message names the path");
  check(gemma3_edge_model_load("x.gguf", nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "model_load rejects a NULL out_model");

  gemma3_edge_model_params bad = gemma3_edge_model_params_default();
  bad.precision = static_cast<gemma3_edge_precision>(7);
  check(gemma3_edge_model_load("x.gguf", &bad, &model) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            contains(gemma3_edge_last_error(), "precision 7"),
        "model_load rejects an unknown precision and names it");

  gemma3_edge_session* session = nullptr;
  check(gemma3_edge_session_create(nullptr, nullptr, &session) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            session == nullptr,
        "session_create rejects a NULL model");
  size_t n = 0;
  check(gemma3_edge_tokenize(nullptr, "a", 1, 1, 0, nullptr, 0, &n) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "tokenize rejects a NULL model");
  check(gemma3_edge_generate(nullptr, "a", nullptr, nullptr, nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "generate rejects a NULL session");
  check(gemma3_edge_session_add_image(nullptr, nullptr, 1, 1, 3) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "add_image rejects a NULL session");

  check(gemma3_edge_model_vocab_size(nullptr) == -1 && gemma3_edge_model_max_context(nullptr) == -1 &&
            gemma3_edge_model_bos_token(nullptr) == -1 && gemma3_edge_model_eos_token(nullptr) == -1 &&
            gemma3_edge_model_end_of_turn_token(nullptr) == -1 && gemma3_edge_session_n_past(nullptr) == -1 &&
            gemma3_edge_session_kv_bytes(nullptr) == -1,
        "getters return -1 for NULL handles");
  gemma3_edge_model_free(nullptr);
  gemma3_edge_session_free(nullptr);
  gemma3_edge_session_reset(nullptr);
}

void test_load_errors(const std::string& scratch_dir) {
  gemma3_edge_model* model = nullptr;
  const std::string missing = scratch_dir + "/no-such-model.gguf";
  check(gemma3_edge_model_load(missing.c_str(), nullptr, &model) == GEMMA3_EDGE_ERROR_MODEL_LOAD && model == nullptr,
        "model_load of a missing file returns MODEL_LOAD");
  check(contains(gemma3_edge_last_error(), missing.c_str()), "the missing-file message names the path");

  const std::string garbage = scratch_dir + "/not-a-model-" + std::to_string(getpid()) + ".gguf";
  FILE* f = std::fopen(garbage.c_str(), "wb");
  if (f != nullptr) {
    const char text[] = "this is not a GGUF file, only some text to fail on";
    std::fwrite(text, 1, sizeof text, f);
    std::fclose(f);
  }
  check(gemma3_edge_model_load(garbage.c_str(), nullptr, &model) == GEMMA3_EDGE_ERROR_MODEL_LOAD && model == nullptr,
        "model_load of a non-GGUF file returns MODEL_LOAD");
  check(contains(gemma3_edge_last_error(), "GGUF"), "the non-GGUF message says GGUF");
  std::remove(garbage.c_str());
}

void test_last_error_is_thread_local() {
  gemma3_edge_model* model = nullptr;
  gemma3_edge_model_load(nullptr, nullptr, &model);
  const std::string mine = gemma3_edge_last_error();
  std::string theirs;
  std::thread other([&] {
    theirs = gemma3_edge_last_error();  // a new thread starts with no error
    gemma3_edge_model_params bad = gemma3_edge_model_params_default();
    bad.precision = static_cast<gemma3_edge_precision>(9);
    gemma3_edge_model_load("x.gguf", &bad, &model);
  });
  other.join();
  check(theirs.empty(), "a new thread sees an empty last error");
  check(!mine.empty() && mine == gemma3_edge_last_error(), "another thread's failure leaves this thread's error");
}

// ---- With a model -----------------------------------------------------------------------

struct Stream {
  std::vector<int32_t> tokens;
  std::string text;
  size_t cancel_after = 0;  // non-zero: return 1 after this many tokens
  bool saw_end_of_text = false;
};

int collect(int32_t token, const char* text, size_t text_len, void* user_data) {
  Stream* s = static_cast<Stream*>(user_data);
  s->text.append(text, text_len);
  if (token == GEMMA3_EDGE_NO_TOKEN) {
    s->saw_end_of_text = true;
    return 0;
  }
  s->tokens.push_back(token);
  return s->cancel_after != 0 && s->tokens.size() >= s->cancel_after ? 1 : 0;
}

struct LogRecord {
  std::vector<std::string> info;
};

void record_log(gemma3_edge_log_level level, const char* message, void* user_data) {
  if (level == GEMMA3_EDGE_LOG_INFO) static_cast<LogRecord*>(user_data)->info.emplace_back(message);
}

std::vector<int32_t> tokenize(const gemma3_edge_model* model, const char* text, int add_bos, int parse_special) {
  size_t n = 0;
  gemma3_edge_tokenize(model, text, std::strlen(text), add_bos, parse_special, nullptr, 0, &n);
  std::vector<int32_t> ids(n);
  if (gemma3_edge_tokenize(model, text, std::strlen(text), add_bos, parse_special, ids.data(), ids.size(), &n) !=
      GEMMA3_EDGE_OK) {
    ids.clear();
  }
  return ids;
}

gemma3_edge_generate_params greedy(int32_t max_tokens) {
  gemma3_edge_generate_params p = gemma3_edge_generate_params_default();
  p.sampling.temperature = 0.0f;
  p.max_tokens = max_tokens;
  return p;
}

gemma3_edge_session* new_session(const gemma3_edge_model* model, int32_t n_ctx) {
  gemma3_edge_session_params params = gemma3_edge_session_params_default();
  params.n_ctx = n_ctx;
  params.n_threads = 2;
  gemma3_edge_session* session = nullptr;
  gemma3_edge_session_create(model, &params, &session);
  return session;
}

void test_tokenizer(const gemma3_edge_model* model) {
  const char* text = "Hello world";
  size_t n = 0;
  check(gemma3_edge_tokenize(model, text, std::strlen(text), 1, 0, nullptr, 0, &n) ==
                GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL &&
            n >= 2,
        "tokenize with no buffer returns BUFFER_TOO_SMALL and the size");
  std::vector<int32_t> ids(n);
  check(gemma3_edge_tokenize(model, text, std::strlen(text), 1, 0, ids.data(), ids.size(), &n) == GEMMA3_EDGE_OK &&
            n == ids.size(),
        "tokenize fills a buffer of the returned size");
  check(std::strcmp(gemma3_edge_last_error(), "") == 0, "a successful call clears the last error");
  check(ids[0] == gemma3_edge_model_bos_token(model), "add_bos puts BOS first");

  size_t len = 0;
  check(gemma3_edge_detokenize(model, ids.data(), ids.size(), nullptr, 0, &len) ==
                GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL &&
            len == std::strlen(text),
        "detokenize with no buffer returns the byte count");
  std::vector<char> out(len + 1, 'x');
  check(gemma3_edge_detokenize(model, ids.data(), ids.size(), out.data(), out.size(), &len) == GEMMA3_EDGE_OK &&
            std::strcmp(out.data(), text) == 0,
        "detokenize(tokenize(text)) == text, NUL-terminated");
  check(gemma3_edge_detokenize(model, ids.data(), ids.size(), out.data(), len, &len) ==
            GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL,
        "detokenize needs room for the NUL");

  const int32_t bad = gemma3_edge_model_vocab_size(model);
  check(gemma3_edge_detokenize(model, &bad, 1, out.data(), out.size(), &len) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            contains(gemma3_edge_last_error(), std::to_string(bad).c_str()),
        "detokenize rejects an id past the vocabulary and names it");

  const char* turn = "<start_of_turn>";
  check(tokenize(model, turn, 0, 1).size() == 1, "parse_special makes <start_of_turn> one token");
  check(tokenize(model, turn, 0, 0).size() > 1, "without parse_special <start_of_turn> is plain text");
  check(gemma3_edge_tokenize(model, nullptr, 0, 0, 0, nullptr, 0, &n) == GEMMA3_EDGE_OK && n == 0,
        "empty text without BOS gives no tokens");
}

void test_sessions(const gemma3_edge_model* model) {
  gemma3_edge_session_params params = gemma3_edge_session_params_default();
  gemma3_edge_session* session = nullptr;
  params.n_ctx = gemma3_edge_model_max_context(model) + 1;
  check(gemma3_edge_session_create(model, &params, &session) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            session == nullptr,
        "session_create rejects n_ctx above the model's context length");
  params = gemma3_edge_session_params_default();
  params.kv_type = static_cast<gemma3_edge_kv_type>(5);
  check(gemma3_edge_session_create(model, &params, &session) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "session_create rejects an unknown kv_type");
  params = gemma3_edge_session_params_default();
  params.n_threads = -1;
  check(gemma3_edge_session_create(model, &params, &session) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "session_create rejects negative n_threads");

  session = new_session(model, 64);
  check(session != nullptr, "session_create with n_ctx 64");
  if (session == nullptr) return;
  const uint8_t pixels[2 * 2 * 3] = {0};
  check(gemma3_edge_session_add_image(session, pixels, 2, 2, 6) == GEMMA3_EDGE_ERROR_NO_VISION_TOWER,
        "add_image on a text model returns NO_VISION_TOWER");
  check(gemma3_edge_session_add_image(session, pixels, 2, 2, 5) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "add_image rejects a stride below 3 * width");
  check(gemma3_edge_session_add_image(session, nullptr, 2, 2, 6) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "add_image rejects NULL pixels");
  gemma3_edge_session_free(session);
}

void test_generation(const gemma3_edge_model* model) {
  gemma3_edge_session* session = new_session(model, 256);
  if (session == nullptr) {
    check(false, "session_create with n_ctx 256");
    return;
  }
  const char* prompt = "The capital of France is";
  const std::vector<int32_t> prompt_ids = tokenize(model, prompt, 1, 0);
  const int32_t n_prompt = static_cast<int32_t>(prompt_ids.size());

  // Greedy: the streamed text is the decoded ids, and the counts add up.
  const gemma3_edge_generate_params params = greedy(8);
  Stream first;
  gemma3_edge_generate_result result;
  check(gemma3_edge_generate(session, prompt, &params, collect, &first, &result) == GEMMA3_EDGE_OK,
        "greedy generate of 8 tokens");
  check(result.prompt_tokens == n_prompt && result.cached_prompt_tokens == 0 && result.completion_tokens == 8 &&
            result.finish_reason == GEMMA3_EDGE_FINISH_LENGTH && first.tokens.size() == 8,
        "8 tokens end with finish reason LENGTH");
  size_t len = 0;
  std::vector<char> decoded(1024);
  gemma3_edge_detokenize(model, first.tokens.data(), first.tokens.size(), decoded.data(), decoded.size(), &len);
  check(first.text == std::string(decoded.data(), len), "streamed text equals the detokenized ids");
  check(gemma3_edge_session_n_past(session) == n_prompt + 7, "the cache holds the prompt and 7 of the 8 tokens");

  // The same prompt again reuses all but its last token and gives the same tokens.
  Stream again;
  gemma3_edge_generate(session, prompt, &params, collect, &again, &result);
  check(result.cached_prompt_tokens == n_prompt - 1, "a repeated prompt reuses the cached prefix");
  check(again.tokens == first.tokens, "greedy tokens are the same with the reused cache");

  // Token ids as the prompt, after a reset.
  gemma3_edge_session_reset(session);
  check(gemma3_edge_session_n_past(session) == 0, "session_reset empties the cache");
  Stream from_ids;
  check(gemma3_edge_generate_tokens(session, prompt_ids.data(), prompt_ids.size(), &params, collect, &from_ids,
                                    &result) == GEMMA3_EDGE_OK &&
            from_ids.tokens == first.tokens,
        "generate_tokens gives the same greedy tokens");

  // Cancel from the callback.
  Stream cancelled;
  cancelled.cancel_after = 3;
  gemma3_edge_generate(session, prompt, &params, collect, &cancelled, &result);
  check(result.finish_reason == GEMMA3_EDGE_FINISH_CANCELLED && result.completion_tokens == 3 &&
            cancelled.tokens.size() == 3 && !cancelled.saw_end_of_text,
        "a non-zero callback return cancels after that token");

  // A stop string taken from the greedy text: the output ends right before it.
  const size_t cut = first.text.find(' ', 1);
  if (cut != std::string::npos && cut + 3 <= first.text.size()) {
    const std::string stop = first.text.substr(cut, 3);
    const char* stops[] = {"no such stop string", stop.c_str()};
    gemma3_edge_generate_params with_stop = params;
    with_stop.stop = stops;
    with_stop.n_stop = 2;
    Stream stopped;
    gemma3_edge_generate(session, prompt, &with_stop, collect, &stopped, &result);
    check(result.finish_reason == GEMMA3_EDGE_FINISH_STOP && stopped.text == first.text.substr(0, first.text.find(stop)),
          "a stop string ends the text right before it ('" + stop + "')");
  } else {
    check(false, "the greedy text has a word to use as a stop string: '" + first.text + "'");
  }

  // Seeded sampling repeats.
  gemma3_edge_generate_params sampled = params;
  sampled.sampling.temperature = 1.0f;
  sampled.sampling.seed = 42;
  Stream s1, s2;
  gemma3_edge_generate(session, prompt, &sampled, collect, &s1, &result);
  gemma3_edge_generate(session, prompt, &sampled, collect, &s2, &result);
  check(s1.tokens.size() == 8 && s1.tokens == s2.tokens, "a fixed seed gives the same sampled tokens");

  // Invalid options.
  gemma3_edge_generate_params bad = params;
  bad.sampling.temperature = -1.0f;
  check(gemma3_edge_generate(session, prompt, &bad, nullptr, nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            contains(gemma3_edge_last_error(), "temperature"),
        "a negative temperature is rejected by name");
  bad = params;
  bad.sampling.top_p = 0.0f;
  check(gemma3_edge_generate(session, prompt, &bad, nullptr, nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "top_p 0 is rejected");
  bad = params;
  bad.max_tokens = -1;
  check(gemma3_edge_generate(session, prompt, &bad, nullptr, nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "negative max_tokens is rejected");
  bad = params;
  bad.n_stop = 1;
  check(gemma3_edge_generate(session, prompt, &bad, nullptr, nullptr, nullptr) == GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "n_stop > 0 with NULL stop is rejected");
  const int32_t out_of_vocab[] = {2, gemma3_edge_model_vocab_size(model)};
  check(gemma3_edge_generate_tokens(session, out_of_vocab, 2, &params, nullptr, nullptr, nullptr) ==
            GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "a prompt id past the vocabulary is rejected");
  check(gemma3_edge_generate_tokens(session, nullptr, 0, &params, nullptr, nullptr, nullptr) ==
            GEMMA3_EDGE_ERROR_INVALID_ARGUMENT,
        "an empty token prompt is rejected");
  gemma3_edge_session_free(session);

  // A full context ends generation with LENGTH; a prompt that fills it is rejected.
  session = new_session(model, n_prompt + 3);
  Stream full;
  gemma3_edge_generate_params unlimited = greedy(0);
  check(gemma3_edge_generate(session, prompt, &unlimited, collect, &full, &result) == GEMMA3_EDGE_OK &&
            result.completion_tokens == 3 && result.finish_reason == GEMMA3_EDGE_FINISH_LENGTH,
        "max_tokens 0 generates until the context is full");
  check(gemma3_edge_generate(session, "The capital of France is Paris, and", &unlimited, nullptr, nullptr, nullptr) ==
                GEMMA3_EDGE_ERROR_INVALID_ARGUMENT &&
            contains(gemma3_edge_last_error(), "n_ctx"),
        "a prompt that fills n_ctx is rejected, naming n_ctx");
  gemma3_edge_session_free(session);
}

void test_sessions_on_threads(const gemma3_edge_model* model) {
  // One model, two sessions generating at once on two threads, each as a single session would.
  const gemma3_edge_generate_params params = greedy(4);
  const char* prompts[2] = {"The capital of France is", "Water boils at"};
  std::vector<int32_t> alone[2], together[2];
  for (int i = 0; i < 2; ++i) {
    gemma3_edge_session* session = new_session(model, 64);
    Stream s;
    gemma3_edge_generate(session, prompts[i], &params, collect, &s, nullptr);
    alone[i] = s.tokens;
    gemma3_edge_session_free(session);
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      gemma3_edge_session* session = new_session(model, 64);
      Stream s;
      gemma3_edge_generate(session, prompts[i], &params, collect, &s, nullptr);
      together[i] = s.tokens;
      gemma3_edge_session_free(session);
    });
  }
  for (auto& t : threads) t.join();
  check(alone[0].size() == 4 && alone[0] == together[0] && alone[1] == together[1],
        "two sessions of one model on two threads give their single-session tokens");
}

void test_with_model(const char* path) {
  LogRecord log;
  gemma3_edge_set_log_level(GEMMA3_EDGE_LOG_INFO);
  gemma3_edge_set_log_callback(record_log, &log);
  gemma3_edge_model* model = nullptr;
  const gemma3_edge_status status = gemma3_edge_model_load(path, nullptr, &model);
  gemma3_edge_set_log_callback(nullptr, nullptr);
  gemma3_edge_set_log_level(GEMMA3_EDGE_LOG_WARNING);
  check(status == GEMMA3_EDGE_OK && model != nullptr, std::string("model_load ") + path);
  if (model == nullptr) return;
  bool logged_load = false;
  for (const std::string& line : log.info) logged_load = logged_load || line.rfind("loaded ", 0) == 0;
  check(logged_load, "the log callback receives the INFO line of the load");

  // Gemma 3's vocabulary: 262144 pieces, <bos> 2, <eos> 1, <end_of_turn> 106.
  check(gemma3_edge_model_vocab_size(model) == 262144, "vocab_size is Gemma 3's 262144");
  check(gemma3_edge_model_bos_token(model) == 2 && gemma3_edge_model_eos_token(model) == 1 &&
            gemma3_edge_model_end_of_turn_token(model) == 106,
        "BOS, EOS and <end_of_turn> ids are 2, 1 and 106");
  check(gemma3_edge_model_max_context(model) > 0, "max_context is positive");
  check(gemma3_edge_model_has_vision(model) == 0, "the text model has no vision tower");

  test_tokenizer(model);
  test_sessions(model);
  test_generation(model);
  test_sessions_on_threads(model);
  gemma3_edge_model_free(model);
}

}  // namespace

int main(int argc, char** argv) {
  const char* model_path = argc > 1 ? argv[1] : std::getenv("GEMMA3_EDGE_MODEL");
  const char* tmp = std::getenv("TMPDIR");
  const std::string scratch_dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";

  test_version_and_status_strings();
  test_defaults();
  test_invalid_arguments_without_model();
  test_load_errors(scratch_dir);
  test_last_error_is_thread_local();
  if (model_path != nullptr && *model_path != '\0') {
    test_with_model(model_path);
  } else {
    std::printf("no model given (argv[1] or GEMMA3_EDGE_MODEL): model tests skipped\n");
    ++g_skipped;
  }
  std::printf("%d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
  return g_failed == 0 ? 0 : 1;
}
