/*
 * Streams a completion from a Gemma 3 GGUF model through the gemma3-edge C API.
 *
 *   gemma3_edge_generate -m gemma-3-270m-q4_k_m.gguf -n 32 "The capital of France is"
 *
 * Text goes to stdout as it is generated. --tokens prints the generated token ids and
 * --stats the counts, the KV cache size and the peak resident memory (getrusage) to stderr.
 * With a vision projector, images (binary PPM files) go to the prompt's <start_of_image>
 * markers, or to its start:
 *
 *   gemma3_edge_generate -m model.gguf --mmproj mmproj.gguf --image cat.ppm "Describe this image."
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "gemma3_edge.h"

#define MAX_TOKENS_PRINTED 4096
#define MAX_IMAGES 16

typedef struct stream_state {
  int32_t tokens[MAX_TOKENS_PRINTED];
  size_t n_tokens;
} stream_state;

static void usage(FILE* out) {
  fprintf(out,
          "usage: gemma3_edge_generate -m MODEL [options] PROMPT\n"
          "  -m PATH        Gemma 3 GGUF file (default: $GEMMA3_EDGE_MODEL)\n"
          "  --mmproj PATH  vision projector GGUF file (llama.cpp mmproj) for --image\n"
          "  --image PATH   binary PPM (P6, maxval 255) image for the prompt; repeat for more\n"
          "  -n N           maximum tokens to generate (default 64; 0: until a stop)\n"
          "  -c N           context size in tokens, prompt included (default 2048)\n"
          "  -t N           threads (default 0: one per CPU)\n"
          "  --kv TYPE      KV cache type: f32 (default), f16 or int8\n"
          "  --temp T       sampling temperature (default 0: greedy)\n"
          "  --seed S       sampling seed (default 0)\n"
          "  --tokens       print the generated token ids to stderr\n"
          "  --stats        print token counts, KV cache bytes and memory use to stderr\n");
}

/* Parses a whole decimal integer in [minimum, maximum]; exits with a message otherwise. */
static long parse_long(const char* option, const char* text, long minimum, long maximum) {
  char* end = NULL;
  errno = 0;
  const long value = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < minimum || value > maximum) {
    fprintf(stderr, "error: %s must be an integer in %ld..%ld, got '%s'\n", option, minimum, maximum, text);
    exit(2);
  }
  return value;
}

/* Prints the current anonymous and file-backed resident memory (Linux /proc/self/status):
 * file-backed pages are the mapped model file, which the kernel can drop and read again. */
static void print_rss_parts(void) {
  FILE* status = fopen("/proc/self/status", "r");
  if (status == NULL) return;
  char line[256];
  long kib = 0;
  while (fgets(line, sizeof line, status) != NULL) {
    if (sscanf(line, "RssAnon: %ld kB", &kib) == 1) fprintf(stderr, "rss_anon_kib: %ld\n", kib);
    if (sscanf(line, "RssFile: %ld kB", &kib) == 1) fprintf(stderr, "rss_file_kib: %ld\n", kib);
  }
  fclose(status);
}

static int on_token(int32_t token, const char* text, size_t text_len, void* user_data) {
  stream_state* state = (stream_state*)user_data;
  if (token != GEMMA3_EDGE_NO_TOKEN && state->n_tokens < MAX_TOKENS_PRINTED) {
    state->tokens[state->n_tokens++] = token;
  }
  fwrite(text, 1, text_len, stdout);
  fflush(stdout);
  return 0; /* keep generating */
}

static void on_log(gemma3_edge_log_level level, const char* message, void* user_data) {
  (void)user_data;
  fprintf(stderr, "[gemma3-edge %d] %s\n", (int)level, message);
}

/* Reads a binary PPM (P6) file with maxval 255 into a malloc'ed RGB buffer. Returns NULL with
 * a message on stderr when the file cannot be read or is not such a PPM. */
static uint8_t* read_ppm(const char* path, int32_t* width, int32_t* height) {
  FILE* file = fopen(path, "rb");
  if (file == NULL) {
    fprintf(stderr, "error: cannot open image %s: %s\n", path, strerror(errno));
    return NULL;
  }
  char magic[3] = {0};
  int w = 0, h = 0, maxval = 0;
  /* The header is "P6", width, height and maxval separated by whitespace, then one whitespace
   * byte before the pixels. Comment lines are not supported. */
  if (fscanf(file, "%2s %d %d %d", magic, &w, &h, &maxval) != 4 || strcmp(magic, "P6") != 0 || maxval != 255 ||
      w < 1 || h < 1 || w > 65535 || h > 65535 || fgetc(file) == EOF) {
    fprintf(stderr, "error: %s is not a binary PPM (P6) file with maxval 255 and no comments\n", path);
    fclose(file);
    return NULL;
  }
  const size_t n_bytes = (size_t)w * (size_t)h * 3;
  uint8_t* rgb = malloc(n_bytes);
  if (rgb == NULL || fread(rgb, 1, n_bytes, file) != n_bytes) {
    fprintf(stderr, "error: %s: %s\n", path, rgb == NULL ? "out of memory" : "the file ends inside the pixels");
    free(rgb);
    fclose(file);
    return NULL;
  }
  fclose(file);
  *width = (int32_t)w;
  *height = (int32_t)h;
  return rgb;
}

int main(int argc, char** argv) {
  const char* model_path = getenv("GEMMA3_EDGE_MODEL");
  const char* prompt = NULL;
  const char* mmproj_path = NULL;
  const char* image_paths[MAX_IMAGES];
  int n_images = 0;
  long max_tokens = 64, n_ctx = 2048, n_threads = 0, seed = 0;
  double temperature = 0.0;
  gemma3_edge_kv_type kv_type = GEMMA3_EDGE_KV_F32;
  int print_tokens = 0, print_stats = 0;

  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    const int has_value = i + 1 < argc;
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(arg, "-m") == 0 && has_value) {
      model_path = argv[++i];
    } else if (strcmp(arg, "--mmproj") == 0 && has_value) {
      mmproj_path = argv[++i];
    } else if (strcmp(arg, "--image") == 0 && has_value) {
      if (n_images == MAX_IMAGES) {
        fprintf(stderr, "error: at most %d --image options are supported\n", MAX_IMAGES);
        return 2;
      }
      image_paths[n_images++] = argv[++i];
    } else if (strcmp(arg, "-n") == 0 && has_value) {
      max_tokens = parse_long("-n", argv[++i], 0, 1000000);
    } else if (strcmp(arg, "-c") == 0 && has_value) {
      n_ctx = parse_long("-c", argv[++i], 1, 1 << 30);
    } else if (strcmp(arg, "-t") == 0 && has_value) {
      n_threads = parse_long("-t", argv[++i], 0, 1024);
    } else if (strcmp(arg, "--kv") == 0 && has_value) {
      const char* name = argv[++i];
      if (strcmp(name, "f32") == 0) {
        kv_type = GEMMA3_EDGE_KV_F32;
      } else if (strcmp(name, "f16") == 0) {
        kv_type = GEMMA3_EDGE_KV_F16;
      } else if (strcmp(name, "int8") == 0) {
        kv_type = GEMMA3_EDGE_KV_INT8;
      } else {
        fprintf(stderr, "error: --kv must be f32, f16 or int8, got '%s'\n", name);
        return 2;
      }
    } else if (strcmp(arg, "--temp") == 0 && has_value) {
      char* end = NULL;
      temperature = strtod(argv[++i], &end);
      if (end == argv[i] || *end != '\0') {
        fprintf(stderr, "error: --temp must be a number, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (strcmp(arg, "--seed") == 0 && has_value) {
      seed = parse_long("--seed", argv[++i], 0, 2147483647L);
    } else if (strcmp(arg, "--tokens") == 0) {
      print_tokens = 1;
    } else if (strcmp(arg, "--stats") == 0) {
      print_stats = 1;
    } else if (arg[0] == '-' && arg[1] != '\0') {
      fprintf(stderr, "error: unknown option or missing value: %s\n", arg);
      usage(stderr);
      return 2;
    } else if (prompt == NULL) {
      prompt = arg;
    } else {
      fprintf(stderr, "error: more than one prompt given ('%s'); quote the prompt\n", arg);
      return 2;
    }
  }
  if (model_path == NULL || prompt == NULL) {
    fprintf(stderr, "error: %s\n", model_path == NULL ? "no model: pass -m PATH or set GEMMA3_EDGE_MODEL"
                                                      : "no prompt given");
    usage(stderr);
    return 2;
  }

  gemma3_edge_set_log_callback(on_log, NULL);

  gemma3_edge_model* model = NULL;
  gemma3_edge_status status = gemma3_edge_model_load_with_mmproj(model_path, mmproj_path, NULL, &model);
  if (status != GEMMA3_EDGE_OK) {
    fprintf(stderr, "error: %s: %s\n", gemma3_edge_status_string(status), gemma3_edge_last_error());
    return 1;
  }

  gemma3_edge_session_params session_params = gemma3_edge_session_params_default();
  session_params.n_ctx = (int32_t)n_ctx;
  session_params.n_threads = (int32_t)n_threads;
  session_params.kv_type = kv_type;
  gemma3_edge_session* session = NULL;
  status = gemma3_edge_session_create(model, &session_params, &session);
  if (status != GEMMA3_EDGE_OK) {
    fprintf(stderr, "error: %s: %s\n", gemma3_edge_status_string(status), gemma3_edge_last_error());
    gemma3_edge_model_free(model);
    return 1;
  }

  for (int i = 0; i < n_images; ++i) {
    int32_t width = 0, height = 0;
    uint8_t* rgb = read_ppm(image_paths[i], &width, &height);
    if (rgb == NULL) {
      gemma3_edge_session_free(session);
      gemma3_edge_model_free(model);
      return 1;
    }
    status = gemma3_edge_session_add_image(session, rgb, width, height, 3 * width);
    free(rgb);
    if (status != GEMMA3_EDGE_OK) {
      fprintf(stderr, "error: %s: %s\n", gemma3_edge_status_string(status), gemma3_edge_last_error());
      gemma3_edge_session_free(session);
      gemma3_edge_model_free(model);
      return 1;
    }
  }

  gemma3_edge_generate_params params = gemma3_edge_generate_params_default();
  params.max_tokens = (int32_t)max_tokens;
  params.sampling.temperature = (float)temperature;
  params.sampling.seed = (uint64_t)seed;

  static stream_state state; /* static: 16 KiB of token ids stay off the stack */
  gemma3_edge_generate_result result;
  status = gemma3_edge_generate(session, prompt, &params, on_token, &state, &result);
  fputc('\n', stdout);
  fflush(stdout); /* before the stderr lines below, for readers of both streams */
  if (status != GEMMA3_EDGE_OK) {
    fprintf(stderr, "error: %s: %s\n", gemma3_edge_status_string(status), gemma3_edge_last_error());
  }

  if (status == GEMMA3_EDGE_OK && print_tokens) {
    fprintf(stderr, "tokens:");
    for (size_t i = 0; i < state.n_tokens; ++i) fprintf(stderr, " %d", (int)state.tokens[i]);
    fputc('\n', stderr);
  }
  if (status == GEMMA3_EDGE_OK && print_stats) {
    static const char* const reasons[] = {"stop", "length", "cancelled"};
    struct rusage usage_now;
    getrusage(RUSAGE_SELF, &usage_now);
    fprintf(stderr, "prompt_tokens: %d\ncompletion_tokens: %d\nfinish_reason: %s\n", (int)result.prompt_tokens,
            (int)result.completion_tokens, reasons[result.finish_reason]);
    fprintf(stderr, "n_ctx: %ld\nkv_cache_bytes: %lld\n", n_ctx, (long long)gemma3_edge_session_kv_bytes(session));
    /* Linux reports ru_maxrss in KiB. */
    fprintf(stderr, "peak_rss_kib: %ld\n", (long)usage_now.ru_maxrss);
    print_rss_parts();
  }

  gemma3_edge_session_free(session);
  gemma3_edge_model_free(model);
  return status == GEMMA3_EDGE_OK ? 0 : 1;
}
