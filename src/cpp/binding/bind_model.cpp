#include <algorithm>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>
#include <fstream>
#include <string>
#include <sys/resource.h>

#include "bandwidth.h"
#include "binding/bindings.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "sampling.h"

namespace py = pybind11;

namespace g3e::binding {

namespace {

std::vector<int32_t> to_ids(const py::handle& ids) {
  std::vector<int32_t> out;
  for (py::handle item : ids) {
    long long v = py::cast<long long>(item);
    if (v < INT32_MIN || v > INT32_MAX) throw InvalidArgument("token id " + std::to_string(v) + " is out of range");
    out.push_back(static_cast<int32_t>(v));
  }
  return out;
}

py::dict config_dict(const ModelConfig& c) {
  py::dict d;
  d["architecture"] = c.architecture;
  d["name"] = c.name;
  d["size_label"] = c.size_label();
  d["n_layers"] = c.n_layers;
  d["d_model"] = c.d_model;
  d["d_ff"] = c.d_ff;
  d["n_heads"] = c.n_heads;
  d["n_kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim;
  d["vocab_size"] = c.vocab_size;
  d["max_context"] = c.max_context;
  d["sliding_window"] = c.sliding_window;
  d["norm_eps"] = c.norm_eps;
  d["attention_scale"] = c.attention_scale;
  d["embedding_scale"] = c.embedding_scale;
  d["rope_base_local"] = c.rope_base_local;
  d["rope_base_global"] = c.rope_base_global;
  d["rope_scale_global"] = c.rope_scale_global;
  py::list types;
  for (LayerType t : c.layer_types) types.append(t == LayerType::kSliding ? "sliding" : "global");
  d["layer_types"] = types;
  d["bos_id"] = c.bos_id;
  d["eos_id"] = c.eos_id;
  d["end_of_turn_id"] = c.end_of_turn_id;
  return d;
}

KVType parse_kv_type(const std::string& name) {
  if (name == "f32") return KVType::kF32;
  if (name == "f16") return KVType::kF16;
  if (name == "int8" || name == "q8_0") return KVType::kInt8;
  throw InvalidArgument("kv_type must be 'f32', 'f16' or 'int8', got '" + name + "'");
}

}  // namespace

void bind_model(py::module_& m) {
  py::register_exception<ModelLoadError>(m, "ModelLoadError", PyExc_ValueError);

  m.def("set_log_level", [](int level) { set_log_level(static_cast<LogLevel>(std::clamp(level, 0, 4))); },
        py::arg("level"), "Sets the minimum level logged to stderr: 0 debug, 1 info, 2 warning, 3 error, 4 none.");

  m.def(
      "measure_read_bandwidth",
      [](int n_threads, int64_t bytes, int repetitions) {
        if (n_threads < 1) throw InvalidArgument("n_threads must be at least 1");
        if (bytes < 64) throw InvalidArgument("bytes must be at least 64");
        ThreadPool pool(n_threads);
        py::gil_scoped_release release;
        return measure_read_bandwidth(pool, bytes, repetitions);
      },
      py::arg("n_threads"), py::arg("bytes") = int64_t{1} << 30, py::arg("repetitions") = 5,
      "Best memory read rate in bytes per second over a buffer of `bytes`.");
  m.def("peak_rss_bytes", []() {
    // VmHWM, the high-water mark of this process image. getrusage's ru_maxrss is not enough on
    // Linux: it keeps the peak of the process before exec, so a process started by a large
    // parent (pytest, an IDE) reports the parent's size.
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) return static_cast<int64_t>(std::stoll(line.substr(6))) * 1024;
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // kilobytes on Linux
  }, "Peak resident memory of this process in bytes.");

  py::class_<Model>(m, "Model")
      .def(py::init([](const std::string& path, const std::string& precision) {
             Precision p;
             if (precision == "quantized") {
               p = Precision::kQuantized;
             } else if (precision == "f32") {
               p = Precision::kF32;
             } else {
               throw InvalidArgument("precision must be 'quantized' or 'f32', got '" + precision + "'");
             }
             py::gil_scoped_release release;
             return std::make_unique<Model>(path, p);
           }),
           py::arg("path"), py::arg("precision") = "quantized")
      .def_property_readonly("config", [](const Model& m) { return config_dict(m.config()); })
      .def_property_readonly("precision",
                             [](const Model& m) { return m.precision() == Precision::kF32 ? "f32" : "quantized"; })
      .def_property_readonly("tokenizer", &Model::tokenizer, py::return_value_policy::reference_internal)
      .def_property_readonly("weight_bytes", &Model::weight_bytes)
      .def_property_readonly("file_size", [](const Model& m) { return m.file().file_size(); })
      .def("layout_summary", &Model::layout_summary)
      .def(
          "kv_bytes_per_position",
          [](const Model& m, const std::string& kv_type) { return kv_bytes_per_position(m.config(), parse_kv_type(kv_type)); },
          py::arg("kv_type"), "Bytes one cached position takes in one layer (keys and values).")
      .def("tensors", [](const Model& m) {
        py::list out;
        for (const GGUFTensorInfo& t : m.file().tensors()) {
          const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
          out.append(py::make_tuple(t.name, info ? info->name : "?", t.shape, t.n_bytes));
        }
        return out;
      });

  py::class_<Context>(m, "Context")
      .def(py::init([](const Model& model, int64_t n_ctx, int64_t n_batch, int n_threads,
                       const std::string& kv_type) {
             ContextOptions o;
             o.n_ctx = n_ctx;
             o.n_batch = n_batch;
             o.n_threads = n_threads;
             o.kv_type = parse_kv_type(kv_type);
             return std::make_unique<Context>(model, o);
           }),
           py::arg("model"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("n_threads") = 1,
           py::arg("kv_type") = "f32", py::keep_alive<1, 2>())
      .def("save_state",
           [](const Context& c) {
             std::vector<uint8_t> state = c.save_state();
             return py::bytes(reinterpret_cast<const char*>(state.data()), state.size());
           })
      .def("load_state",
           [](Context& c, const py::bytes& state) {
             std::string_view view = state;
             c.load_state(reinterpret_cast<const uint8_t*>(view.data()), view.size());
           },
           py::arg("state"))
      .def_property_readonly("kv_type", [](const Context& c) { return kv_type_name(c.options().kv_type); })
      .def_property_readonly("n_past", &Context::n_past)
      .def_property_readonly("kv_bytes", &Context::kv_bytes)
      .def_property_readonly("n_ctx", [](const Context& c) { return c.options().n_ctx; })
      .def_property_readonly("n_batch", [](const Context& c) { return c.options().n_batch; })
      .def_property_readonly("n_threads", [](const Context& c) { return c.options().n_threads; })
      .def("reset", &Context::reset)
      .def("truncate", &Context::truncate, py::arg("n"),
           "Keeps cached positions 0..n-1. Returns False (and empties the cache) when a sliding "
           "layer's ring buffer no longer holds what position n needs.")
      .def(
          "eval",
          [](Context& ctx, const py::object& tokens, int64_t logits_from, const py::object& embeddings,
             const py::object& replace, const std::vector<std::pair<int64_t, int64_t>>& spans) {
            std::vector<int32_t> ids = to_ids(tokens);
            const int64_t n = static_cast<int64_t>(ids.size());
            const int64_t vocab = ctx.model().config().vocab_size;
            const int64_t d_model = ctx.model().config().d_model;
            if (logits_from < 0) logits_from = std::max<int64_t>(0, n + logits_from);
            const int64_t rows = std::max<int64_t>(0, n - logits_from);

            EvalInputs inputs;
            inputs.bidirectional_spans = spans;
            py::array_t<float, py::array::c_style | py::array::forcecast> embedding_array;
            py::array_t<uint8_t, py::array::c_style | py::array::forcecast> replace_array;
            if (!embeddings.is_none()) {
              embedding_array = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(embeddings);
              replace_array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(replace);
              if (!embedding_array || embedding_array.ndim() != 2 || embedding_array.shape(0) != n ||
                  embedding_array.shape(1) != d_model) {
                throw InvalidArgument("embeddings must be a float32 array of shape (" + std::to_string(n) + ", " +
                                      std::to_string(d_model) + ")");
              }
              if (!replace_array || replace_array.ndim() != 1 || replace_array.shape(0) != n) {
                throw InvalidArgument("replace must be a boolean array of length " + std::to_string(n));
              }
              inputs.embeddings = embedding_array.data();
              inputs.replace = replace_array.data();
            }
            py::array_t<float> logits({rows, vocab});
            float* out = rows > 0 ? logits.mutable_data() : nullptr;
            {
              py::gil_scoped_release release;
              ctx.eval(ids.data(), n, logits_from, out, &inputs);
            }
            return logits;
          },
          py::arg("tokens"), py::arg("logits_from") = -1, py::arg("embeddings") = py::none(),
          py::arg("replace") = py::none(), py::arg("spans") = std::vector<std::pair<int64_t, int64_t>>{},
          "Appends tokens to the cache. Returns logits for tokens[logits_from:] as float32 "
          "[rows, vocab]; a negative logits_from counts from the end (-1: the last token only). "
          "embeddings (n, d_model) replace the token embeddings where replace is true; spans are "
          "[begin, end) index ranges whose tokens attend to each other in both directions.")
      .def(
          "decode_each",
          [](Context& ctx, const py::object& tokens) {
            std::vector<int32_t> ids = to_ids(tokens);
            std::vector<float> logits(static_cast<size_t>(ctx.model().config().vocab_size));
            py::gil_scoped_release release;
            const auto start = std::chrono::steady_clock::now();
            for (int32_t id : ids) ctx.eval(&id, 1, 0, logits.data());
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          },
          py::arg("tokens"),
          "Evaluates the tokens one at a time with logits for each, as a decode loop does; "
          "returns the seconds taken. For benchmarks.");

  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](float temperature, int32_t top_k, float top_p, float min_p, float repeat_penalty,
                       int32_t repeat_last_n, uint64_t seed) {
             SamplingParams p;
             p.temperature = temperature;
             p.top_k = top_k;
             p.top_p = top_p;
             p.min_p = min_p;
             p.repeat_penalty = repeat_penalty;
             p.repeat_last_n = repeat_last_n;
             p.seed = seed;
             return std::make_unique<Sampler>(p);
           }),
           py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
           py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64, py::arg("seed") = 0)
      .def(
          "sample",
          [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits,
             const std::vector<int32_t>& history) {
            if (logits.ndim() != 1) throw InvalidArgument("logits must be a 1-D array");
            const float* data = logits.data();
            const int64_t n = logits.shape(0);
            if (n < 1) throw InvalidArgument("logits must not be empty");
            py::gil_scoped_release release;
            return s.sample(data, n, history);
          },
          py::arg("logits"), py::arg("history"));
}

}  // namespace g3e::binding
