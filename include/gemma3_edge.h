/*
 * gemma3-edge C API: load a Gemma 3 GGUF model, tokenize, and stream generated text.
 *
 * C99 and C++ compatible. Every function that can fail returns a gemma3_edge_status;
 * gemma3_edge_last_error() then describes the failure. No C++ exception crosses this API.
 *
 * Objects: a gemma3_edge_model contains the weights and tokenizer and is read-only after
 * loading, so several threads may use one model at once (each through its own session). A
 * gemma3_edge_session contains one KV cache; use it from one thread at a time. Free every
 * session before its model.
 *
 * Strings are UTF-8. Output text is bytes as the model produced them: a detokenized byte
 * sequence may be invalid UTF-8, while streamed generation text is always whole characters.
 *
 * Typical use:
 *   gemma3_edge_model* model;
 *   if (gemma3_edge_model_load(path, NULL, &model) != GEMMA3_EDGE_OK)
 *     fprintf(stderr, "%s\n", gemma3_edge_last_error());
 *   gemma3_edge_session* session;
 *   gemma3_edge_session_create(model, NULL, &session);
 *   gemma3_edge_generate_params params = gemma3_edge_generate_params_default();
 *   gemma3_edge_generate(session, "The capital of France is", &params, on_token, NULL, NULL);
 *   gemma3_edge_session_free(session);
 *   gemma3_edge_model_free(model);
 */
#ifndef GEMMA3_EDGE_H_
#define GEMMA3_EDGE_H_

#include <stddef.h>
#include <stdint.h>

/* The shared library is built with hidden visibility, so only functions marked with this
 * are exported. */
#if defined(__GNUC__) || defined(__clang__)
#define GEMMA3_EDGE_API __attribute__((visibility("default")))
#else
#define GEMMA3_EDGE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header; gemma3_edge_version() returns the library's. Within one major
 * version, changes only add functions and enum values: existing signatures and struct layouts
 * stay as they are, so a program built against an older header of that major version runs
 * with a newer library. New options therefore come as new functions, not new struct fields. */
#define GEMMA3_EDGE_VERSION_MAJOR 0
#define GEMMA3_EDGE_VERSION_MINOR 1
#define GEMMA3_EDGE_VERSION_PATCH 0
#define GEMMA3_EDGE_VERSION_STRING "0.1.0"

/* ---- Errors --------------------------------------------------------------------------- */

typedef enum gemma3_edge_status {
  GEMMA3_EDGE_OK = 0,
  /* An argument is invalid: a NULL pointer, a value out of range, a token id outside the
   * vocabulary, a prompt that does not fit in the context. */
  GEMMA3_EDGE_ERROR_INVALID_ARGUMENT = 1,
  /* The model file is missing, unreadable, malformed, or a model this runtime cannot run. */
  GEMMA3_EDGE_ERROR_MODEL_LOAD = 2,
  /* A memory allocation failed. */
  GEMMA3_EDGE_ERROR_OUT_OF_MEMORY = 3,
  /* An output buffer is too small; the call stored the size it needs. */
  GEMMA3_EDGE_ERROR_BUFFER_TOO_SMALL = 4,
  /* Image input was given to a model without a vision tower. */
  GEMMA3_EDGE_ERROR_NO_VISION_TOWER = 5,
  /* Any other failure inside the runtime (a bug, or an invalid GEMMA3_EDGE_ISA setting). */
  GEMMA3_EDGE_ERROR_INTERNAL = 6
} gemma3_edge_status;

/* Returns a static English name for a status, e.g. "invalid argument"; "unknown status"
 * for a value outside the enum. */
GEMMA3_EDGE_API const char* gemma3_edge_status_string(gemma3_edge_status status);

/* Returns the message of the last call on this thread that returned a status: the error
 * text after a failure, "" after a success. The string stays valid until the next API call
 * on this thread. Thread-local, so threads do not see each other's errors. */
GEMMA3_EDGE_API const char* gemma3_edge_last_error(void);

/* Returns the library version, e.g. "0.1.0" (static storage). */
GEMMA3_EDGE_API const char* gemma3_edge_version(void);

/* ---- Logging -------------------------------------------------------------------------- */

typedef enum gemma3_edge_log_level {
  GEMMA3_EDGE_LOG_DEBUG = 0,
  GEMMA3_EDGE_LOG_INFO = 1,
  GEMMA3_EDGE_LOG_WARNING = 2,
  GEMMA3_EDGE_LOG_ERROR = 3,
  GEMMA3_EDGE_LOG_NONE = 4 /* only as a minimum level: log nothing */
} gemma3_edge_log_level;

/* Receives one log message (no trailing newline; valid only during the call). It may be
 * called from any thread that uses the library, one call at a time, and must not call any
 * gemma3_edge function (the library holds its log lock during the call). */
typedef void (*gemma3_edge_log_callback)(gemma3_edge_log_level level, const char* message, void* user_data);

/* Sends log messages to callback (with user_data) instead of stderr; NULL restores stderr.
 * Process-wide. */
GEMMA3_EDGE_API void gemma3_edge_set_log_callback(gemma3_edge_log_callback callback, void* user_data);

/* Sets the minimum level that is logged (process-wide; the default is WARNING). Values
 * outside DEBUG..NONE are clamped into that range. */
GEMMA3_EDGE_API void gemma3_edge_set_log_level(gemma3_edge_log_level level);

/* ---- Model ---------------------------------------------------------------------------- */

typedef struct gemma3_edge_model gemma3_edge_model;

typedef enum gemma3_edge_precision {
  /* Weights as stored in the file (int4/int8 kernels, int8 activations): the fast path. */
  GEMMA3_EDGE_PRECISION_QUANTIZED = 0,
  /* Every weight dequantized to float32 (4 bytes per weight): the reference path. */
  GEMMA3_EDGE_PRECISION_F32 = 1
} gemma3_edge_precision;

typedef struct gemma3_edge_model_params {
  gemma3_edge_precision precision;
} gemma3_edge_model_params;

/* Returns the default model parameters (QUANTIZED). */
GEMMA3_EDGE_API gemma3_edge_model_params gemma3_edge_model_params_default(void);

/* Loads a Gemma 3 GGUF file. params may be NULL for the defaults. On success stores a new
 * model in *out_model (free it with gemma3_edge_model_free()); on failure stores NULL.
 * Errors: INVALID_ARGUMENT (NULL path or out_model, unknown precision), MODEL_LOAD,
 * OUT_OF_MEMORY. */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_model_load(const char* path, const gemma3_edge_model_params* params,
                                                          gemma3_edge_model** out_model);

/* Loads a Gemma 3 GGUF file with its vision projector: mmproj_path names a llama.cpp mmproj
 * GGUF file for this model (clip.projector_type "gemma3"), so sessions can take images
 * (gemma3_edge_session_add_image()). mmproj_path NULL loads the text model only, as
 * gemma3_edge_model_load(). params and results as gemma3_edge_model_load(); the precision
 * applies to both files.
 * Errors: INVALID_ARGUMENT, MODEL_LOAD (also when the projector's output width differs from
 * the text model's d_model), OUT_OF_MEMORY. */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_model_load_with_mmproj(const char* path, const char* mmproj_path,
                                                                      const gemma3_edge_model_params* params,
                                                                      gemma3_edge_model** out_model);

/* Frees a model. NULL is ignored. Every session of the model must be freed first. */
GEMMA3_EDGE_API void gemma3_edge_model_free(gemma3_edge_model* model);

/* Model facts. Each returns -1 for a NULL model. */
GEMMA3_EDGE_API int32_t gemma3_edge_model_vocab_size(const gemma3_edge_model* model);
/* Returns the longest context the model was trained for (GGUF context_length), in tokens. */
GEMMA3_EDGE_API int32_t gemma3_edge_model_max_context(const gemma3_edge_model* model);
GEMMA3_EDGE_API int32_t gemma3_edge_model_bos_token(const gemma3_edge_model* model);
GEMMA3_EDGE_API int32_t gemma3_edge_model_eos_token(const gemma3_edge_model* model);
/* Returns the id of <end_of_turn>, or -1 when the vocabulary has none (or model is NULL). */
GEMMA3_EDGE_API int32_t gemma3_edge_model_end_of_turn_token(const gemma3_edge_model* model);
/* Returns 1 when the model was loaded with a vision projector and can take images, else 0
 * (also for NULL). */
GEMMA3_EDGE_API int gemma3_edge_model_has_vision(const gemma3_edge_model* model);

/* ---- Tokenizer ------------------------------------------------------------------------ */

/* Encodes text_len bytes of UTF-8 text (the text need not be NUL-terminated) into token ids.
 * add_bos != 0 puts BOS first. parse_special != 0 turns control tokens written in the text,
 * such as "<start_of_turn>", into their ids; otherwise they are encoded as plain text.
 * Stores the number of ids in *n_tokens and, when it is <= capacity, the ids in tokens.
 * Pass tokens = NULL and capacity = 0 to query the size.
 * Errors: INVALID_ARGUMENT (NULL model, n_tokens, or text with text_len > 0; tokens NULL with
 * capacity > 0), BUFFER_TOO_SMALL (*n_tokens > capacity). */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_tokenize(const gemma3_edge_model* model, const char* text,
                                                        size_t text_len, int add_bos, int parse_special,
                                                        int32_t* tokens, size_t capacity, size_t* n_tokens);

/* Decodes token ids to the bytes of their pieces (control tokens such as BOS give no text).
 * Stores the byte count in *text_len and, when text_len + 1 <= capacity, the bytes followed
 * by a NUL in text. Pass text = NULL and capacity = 0 to query the size. The bytes may be
 * invalid UTF-8 when the ids end inside a character.
 * Errors: INVALID_ARGUMENT (NULL model or text_len, tokens NULL with n_tokens > 0, an id
 * outside the vocabulary), BUFFER_TOO_SMALL (*text_len + 1 > capacity). */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_detokenize(const gemma3_edge_model* model, const int32_t* tokens,
                                                          size_t n_tokens, char* text, size_t capacity,
                                                          size_t* text_len);

/* ---- Session (KV cache) --------------------------------------------------------------- */

typedef struct gemma3_edge_session gemma3_edge_session;

typedef enum gemma3_edge_kv_type {
  GEMMA3_EDGE_KV_F32 = 0,
  GEMMA3_EDGE_KV_F16 = 1, /* half the memory of F32 */
  GEMMA3_EDGE_KV_INT8 = 2 /* int8 in blocks of 32 with a float scale: 9 bits per value */
} gemma3_edge_kv_type;

typedef struct gemma3_edge_session_params {
  int32_t n_ctx;     /* maximum positions (prompt + generated tokens), 1..max_context */
  int32_t n_batch;   /* prompt tokens per forward chunk, >= 1 */
  int32_t n_threads; /* >= 1, or 0 for one thread per CPU the process may run on */
  gemma3_edge_kv_type kv_type;
} gemma3_edge_session_params;

/* Returns the default session parameters: n_ctx 4096, n_batch 512, n_threads 0, KV F32. */
GEMMA3_EDGE_API gemma3_edge_session_params gemma3_edge_session_params_default(void);

/* Creates a session on model and allocates its KV cache. params may be NULL for the
 * defaults; an n_ctx above the model's max_context is an error. On success stores a new
 * session in *out_session (free it with gemma3_edge_session_free()); on failure stores NULL.
 * Errors: INVALID_ARGUMENT, OUT_OF_MEMORY. */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_session_create(const gemma3_edge_model* model,
                                                              const gemma3_edge_session_params* params,
                                                              gemma3_edge_session** out_session);

/* Frees a session. NULL is ignored. */
GEMMA3_EDGE_API void gemma3_edge_session_free(gemma3_edge_session* session);

/* Forgets the cached tokens, so the next prompt is computed from scratch. Generation
 * otherwise reuses the longest prefix the cache shares with the new prompt. NULL is
 * ignored. */
GEMMA3_EDGE_API void gemma3_edge_session_reset(gemma3_edge_session* session);

/* Returns the number of positions the KV cache holds, or -1 for a NULL session. */
GEMMA3_EDGE_API int32_t gemma3_edge_session_n_past(const gemma3_edge_session* session);

/* Returns the bytes of KV cache memory the session allocated, or -1 for a NULL session. */
GEMMA3_EDGE_API int64_t gemma3_edge_session_kv_bytes(const gemma3_edge_session* session);

/* Adds an image to the next prompt: rgb contains height rows of width pixels, 3 bytes (R, G, B)
 * per pixel, rows stride_bytes apart (>= 3 * width), at most 16384 pixels on a side. The
 * pixels are copied, resized to the vision tower's input size with Pillow's bilinear filter and
 * encoded during this call, so rgb may be freed when it returns.
 * The next gemma3_edge_generate() uses the added images and drops them (also when it fails),
 * and gemma3_edge_session_reset() drops them too. Each "<start_of_image>" in the prompt text marks where
 * the next image goes; a prompt without markers gets all images at its start. Each image
 * becomes "\n\n<start_of_image>", its soft tokens (256 for Gemma 3) and "<end_of_image>\n\n",
 * as transformers' Gemma 3 processor lays it out (without Pan & Scan crops). The session's
 * n_batch must be at least the image token count (gemma3_edge_session_create() checks it).
 * Errors: INVALID_ARGUMENT (NULL session or rgb, width or height < 1 or > 16384, stride too small),
 * NO_VISION_TOWER (the model was loaded without an mmproj file), OUT_OF_MEMORY. */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_session_add_image(gemma3_edge_session* session, const uint8_t* rgb,
                                                                 int32_t width, int32_t height,
                                                                 int32_t stride_bytes);

/* ---- Generation ----------------------------------------------------------------------- */

/* Draw a seed from the operating system's random source. */
#define GEMMA3_EDGE_SEED_RANDOM UINT64_MAX

typedef struct gemma3_edge_sampling_params {
  float temperature;      /* >= 0; 0 picks the most likely token (greedy) */
  int32_t top_k;          /* >= 0; 0 keeps every token */
  float top_p;            /* in (0, 1]; 1 keeps every token */
  float min_p;            /* in [0, 1]; drops tokens below min_p * p(most likely token) */
  float repeat_penalty;   /* > 0; 1 disables it */
  int32_t repeat_last_n;  /* >= 0: how many recent tokens the penalty looks at */
  uint64_t seed;          /* a fixed seed gives the same tokens on every run; or SEED_RANDOM */
} gemma3_edge_sampling_params;

/* Returns the default sampling parameters: temperature 0.8, top_k 40, top_p 0.95,
 * min_p 0.05, repeat_penalty 1 (off), repeat_last_n 64, seed 0. */
GEMMA3_EDGE_API gemma3_edge_sampling_params gemma3_edge_sampling_params_default(void);

typedef struct gemma3_edge_generate_params {
  gemma3_edge_sampling_params sampling;
  int32_t max_tokens;       /* >= 0; 0 generates until a stop or a full context */
  int add_bos;              /* text prompts only: != 0 puts BOS first */
  int parse_special;        /* text prompts only: != 0 turns "<start_of_turn>" etc. into ids */
  const char* const* stop;  /* n_stop UTF-8 stop strings (may be NULL when n_stop is 0) */
  size_t n_stop;
} gemma3_edge_generate_params;

/* Returns the default generation parameters: the sampling defaults, max_tokens 128,
 * add_bos 1, parse_special 0, no stop strings. */
GEMMA3_EDGE_API gemma3_edge_generate_params gemma3_edge_generate_params_default(void);

/* Token id passed to the token callback with the text left at the end of generation. */
#define GEMMA3_EDGE_NO_TOKEN (-1)

/* Receives each generated token with the text that became final with it: text_len bytes of
 * whole UTF-8 characters at text (NUL-terminated, valid only during the call; text_len may
 * be 0 while the text could still be the start of a stop string). After the last token it
 * is called once more with token GEMMA3_EDGE_NO_TOKEN when text is left over (not after a
 * cancel). Returns 0 to continue, non-zero to stop generating after this token. It must not
 * use the session that is generating. */
typedef int (*gemma3_edge_token_callback)(int32_t token, const char* text, size_t text_len, void* user_data);

typedef enum gemma3_edge_finish_reason {
  GEMMA3_EDGE_FINISH_STOP = 0,      /* EOS, <end_of_turn> or a stop string */
  GEMMA3_EDGE_FINISH_LENGTH = 1,    /* max_tokens reached or the context is full */
  GEMMA3_EDGE_FINISH_CANCELLED = 2  /* the token callback returned non-zero */
} gemma3_edge_finish_reason;

typedef struct gemma3_edge_generate_result {
  int32_t prompt_tokens;
  int32_t cached_prompt_tokens; /* prompt tokens reused from the session's cache */
  int32_t completion_tokens;    /* generated tokens; a final EOS or <end_of_turn> is not counted */
  gemma3_edge_finish_reason finish_reason;
} gemma3_edge_generate_result;

/* Generates a continuation of a NUL-terminated UTF-8 prompt, tokenized with params->add_bos
 * and params->parse_special, with the images added since the last call (see
 * gemma3_edge_session_add_image(); a marker count that differs from the image count is
 * INVALID_ARGUMENT). Stops at EOS or <end_of_turn> (neither is passed to the
 * callback), before the first stop string, after max_tokens tokens, when the context is
 * full, or when the callback returns non-zero. The Gemma 3 chat format is not applied:
 * write "<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n" and set
 * parse_special for instruction-tuned use. params may be NULL for the defaults, callback
 * may be NULL, result may be NULL.
 * Errors: INVALID_ARGUMENT (NULL session or prompt, invalid sampling values, negative
 * max_tokens, an empty prompt or one that fills n_ctx), OUT_OF_MEMORY, INTERNAL. */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_generate(gemma3_edge_session* session, const char* prompt,
                                                        const gemma3_edge_generate_params* params,
                                                        gemma3_edge_token_callback callback, void* user_data,
                                                        gemma3_edge_generate_result* result);

/* Like gemma3_edge_generate() for a prompt given as n_tokens token ids, used as they are
 * (add_bos and parse_special are ignored). Errors as gemma3_edge_generate(), plus
 * INVALID_ARGUMENT for an id outside the vocabulary, and for added images, which only a text
 * prompt can place (they are dropped). */
GEMMA3_EDGE_API gemma3_edge_status gemma3_edge_generate_tokens(gemma3_edge_session* session, const int32_t* tokens,
                                                               size_t n_tokens,
                                                               const gemma3_edge_generate_params* params,
                                                               gemma3_edge_token_callback callback, void* user_data,
                                                               gemma3_edge_generate_result* result);

#ifdef __cplusplus
}
#endif

#endif /* GEMMA3_EDGE_H_ */
