#include <memory>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "binding/bindings.h"
#include "errors.h"
#include "vision.h"

namespace py = pybind11;

namespace g3e::binding {

namespace {

// A vision model with the thread pool its encode() calls run on.
struct VisionRunner {
  std::unique_ptr<VisionModel> model;
  std::unique_ptr<ThreadPool> pool;
};

py::dict vision_config_dict(const VisionConfig& c) {
  py::dict d;
  d["image_size"] = c.image_size;
  d["patch_size"] = c.patch_size;
  d["patches_per_side"] = c.patches_per_side;
  d["n_patches"] = c.n_patches;
  d["width"] = c.width;
  d["d_ff"] = c.d_ff;
  d["n_layers"] = c.n_layers;
  d["n_heads"] = c.n_heads;
  d["head_dim"] = c.head_dim;
  d["projection_dim"] = c.projection_dim;
  d["pool_kernel"] = c.pool_kernel;
  d["tokens_per_side"] = c.tokens_per_side;
  d["n_tokens"] = c.n_tokens;
  d["norm_eps"] = c.norm_eps;
  d["image_mean"] = std::vector<float>(c.image_mean.begin(), c.image_mean.end());
  d["image_std"] = std::vector<float>(c.image_std.begin(), c.image_std.end());
  d["activation"] = c.activation == VisionActivation::kGeluErf ? "gelu" : "gelu_pytorch_tanh";
  return d;
}

}  // namespace

void bind_vision(py::module_& m) {
  py::class_<VisionRunner>(m, "VisionModel")
      .def(py::init([](const std::string& path, const std::string& precision, int n_threads) {
             Precision p;
             if (precision == "quantized") {
               p = Precision::kQuantized;
             } else if (precision == "f32") {
               p = Precision::kF32;
             } else {
               throw InvalidArgument("precision must be 'quantized' or 'f32', got '" + precision + "'");
             }
             if (n_threads < 1) throw InvalidArgument("n_threads must be at least 1, got " + std::to_string(n_threads));
             auto runner = std::make_unique<VisionRunner>();
             {
               py::gil_scoped_release release;
               runner->model = std::make_unique<VisionModel>(path, p);
             }
             runner->pool = std::make_unique<ThreadPool>(n_threads);
             return runner;
           }),
           py::arg("path"), py::arg("precision") = "quantized", py::arg("n_threads") = 1)
      .def_property_readonly("config", [](const VisionRunner& r) { return vision_config_dict(r.model->config()); })
      .def_property_readonly("precision",
                             [](const VisionRunner& r) {
                               return r.model->precision() == Precision::kF32 ? "f32" : "quantized";
                             })
      .def_property_readonly("weight_bytes", [](const VisionRunner& r) { return r.model->weight_bytes(); })
      .def_property_readonly("file_size", [](const VisionRunner& r) { return r.model->file().file_size(); })
      .def_property_readonly("n_threads", [](const VisionRunner& r) { return r.pool->size(); })
      .def("layout_summary", [](const VisionRunner& r) { return r.model->layout_summary(); })
      .def(
          "encode",
          [](VisionRunner& r, const py::object& pixels, bool return_tower) -> py::object {
            const VisionConfig& c = r.model->config();
            auto array = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(pixels);
            if (!array || array.ndim() != 3 || array.shape(0) != 3 || array.shape(1) != c.image_size ||
                array.shape(2) != c.image_size) {
              throw InvalidArgument("pixels must be a float32 array of shape (3, " + std::to_string(c.image_size) +
                                    ", " + std::to_string(c.image_size) +
                                    "): one image, resized and normalised as the model's preprocessing does");
            }
            py::array_t<float> tokens({c.n_tokens, c.projection_dim});
            py::array_t<float> tower;
            float* tower_data = nullptr;
            if (return_tower) {
              tower = py::array_t<float>({c.n_patches, c.width});
              tower_data = tower.mutable_data();
            }
            {
              const float* data = array.data();
              float* out = tokens.mutable_data();
              py::gil_scoped_release release;
              r.model->encode(data, out, *r.pool, tower_data);
            }
            if (return_tower) return py::make_tuple(tokens, tower);
            return std::move(tokens);
          },
          py::arg("pixels"), py::arg("return_tower") = false,
          "Encodes one preprocessed image (3, image_size, image_size) to its soft tokens "
          "(n_tokens, projection_dim) float32. With return_tower=True, returns (tokens, tower) "
          "where tower is the encoder output after its final LayerNorm (n_patches, width).")
      .def("tensors", [](const VisionRunner& r) {
        py::list out;
        for (const GGUFTensorInfo& t : r.model->file().tensors()) {
          const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
          out.append(py::make_tuple(t.name, info ? info->name : "?", t.shape, t.n_bytes));
        }
        return out;
      });
}

}  // namespace g3e::binding
