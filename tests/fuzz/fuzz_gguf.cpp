// libFuzzer target: a GGUF file of arbitrary bytes goes through the reader, every typed
// accessor, the configuration reader and the whole model loader. A file that loads then runs
// one forward step per ISA and a sampling step. A malformed file must end in ModelLoadError (or
// InvalidArgument for context settings the model cannot take), never in a crash, a sanitizer
// report, an uncaught exception or an allocation over libFuzzer's -malloc_limit_mb.
//
// Environment: G3E_FUZZ_STRICT=1 also fails on the std::invalid_argument that the tokenizer
// and dequantize_row() throw during loading today (they should become ModelLoadError).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "errors.h"
#include "gguf.h"
#include "kernels/matmul.h"
#include "log.h"
#include "model.h"
#include "sampling.h"

using namespace g3e;

namespace {

int g_fd = -1;
std::string g_path;
bool g_strict = false;
std::vector<std::string> g_isas;  // lowest first, so the best ISA stays active after each input

// GGUFFile takes a path and maps the file, so each input is written to one in-memory file.
void write_input(const uint8_t* data, size_t size) {
  if (ftruncate(g_fd, 0) != 0 || (size > 0 && pwrite(g_fd, data, size, 0) != static_cast<ssize_t>(size))) {
    std::perror("fuzz_gguf: writing the input file");
    std::abort();
  }
}

void read_every_key(const GGUFFile& file) {
  for (const auto& [key, value] : file.metadata()) {
    try {
      switch (value.type) {
        case GGUFValueType::kString: file.get_string(key); break;
        case GGUFValueType::kBool: file.get_bool(key); break;
        case GGUFValueType::kFloat32:
        case GGUFValueType::kFloat64: file.get_float(key); break;
        case GGUFValueType::kArray:
          if (value.array_type == GGUFValueType::kString) {
            file.get_string_array(key);
          } else if (value.array_type == GGUFValueType::kFloat32 || value.array_type == GGUFValueType::kFloat64) {
            file.get_float_array(key);
          } else if (value.array_type != GGUFValueType::kArray && value.array_type != GGUFValueType::kBool) {
            file.get_int_array(key);
          }
          break;
        default: file.get_uint(key); file.get_float(key); break;
      }
    } catch (const ModelLoadError&) {
    }
  }
}

// Runs one forward step with the matmul kernels of every ISA this CPU runs. UBSan reports an
// out-of-range float-to-int conversion only in the scalar kernels, because SIMD instructions
// define its result.
void run_model(const Model& model) {
  ContextOptions options;
  options.n_ctx = std::min<int64_t>(8, model.config().max_context);
  options.n_batch = 4;
  options.n_threads = 1;
  const std::vector<int32_t> tokens = {model.config().bos_id};
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  for (const std::string& isa : g_isas) {
    set_isa(isa);
    Context context(model, options);
    context.eval(tokens.data(), 1, 0, logits.data());
  }
  SamplingParams params;
  params.seed = 1;
  Sampler sampler(params);
  int32_t next = 0;
  try {
    next = sampler.sample(logits.data(), model.config().vocab_size, tokens);
  } catch (const std::domain_error&) {
    // The sampler rejects NaN logits, which finite but huge weights can produce; any other
    // reason for this error is a bug.
    if (std::none_of(logits.begin(), logits.end(), [](float x) { return std::isnan(x); })) std::abort();
    return;
  }
  if (next < 0 || next >= model.config().vocab_size) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_fd = memfd_create("fuzz_gguf", 0);
  if (g_fd < 0) {
    std::perror("fuzz_gguf: memfd_create");
    std::abort();
  }
  g_path = "/proc/self/fd/" + std::to_string(g_fd);
  const char* strict = std::getenv("G3E_FUZZ_STRICT");
  g_strict = strict != nullptr && std::string(strict) == "1";
  set_log_level(LogLevel::kNone);
  g_isas = available_isas();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_input(data, size);
  try {
    GGUFFile file(g_path);
    read_every_key(file);
    try {
      read_config(file);
    } catch (const ModelLoadError&) {
    }
  } catch (const ModelLoadError&) {
    return 0;
  }
  try {
    Model model(g_path, Precision::kQuantized);
    run_model(model);
  } catch (const ModelLoadError&) {
  } catch (const InvalidArgument&) {
  } catch (const std::invalid_argument& e) {
    if (g_strict) {
      std::fprintf(stderr, "fuzz_gguf: std::invalid_argument instead of ModelLoadError: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
