// Python access to the kernels: dequantization, packed weights and matmul, ISA selection.
// Used by the tests and benchmarks; the model itself calls the kernels from C++.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "binding/bindings.h"
#include "kernels/ggml_types.h"
#include "kernels/matmul.h"
#include "threadpool.h"

namespace py = pybind11;

namespace g3e::binding {

namespace {

// Raw bytes of a bytes object or a C-contiguous numpy array, plus the object that owns them.
struct RawBytes {
  py::object owner;
  const uint8_t* data = nullptr;
  int64_t size = 0;
};

RawBytes raw_bytes(const py::object& obj) {
  RawBytes r;
  if (py::isinstance<py::bytes>(obj)) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    PyBytes_AsStringAndSize(obj.ptr(), &p, &n);
    r.owner = obj;
    r.data = reinterpret_cast<const uint8_t*>(p);
    r.size = n;
    return r;
  }
  auto arr = py::array::ensure(obj, py::array::c_style);
  if (!arr) throw std::invalid_argument("expected bytes or a C-contiguous numpy array");
  r.owner = arr;
  r.data = static_cast<const uint8_t*>(arr.data());
  r.size = static_cast<int64_t>(arr.nbytes());
  return r;
}

const GGMLTypeInfo& checked_type(uint32_t type_id) {
  const GGMLTypeInfo* info = ggml_type_info(type_id);
  if (info == nullptr || !info->can_dequantize) {
    throw std::invalid_argument("unsupported ggml type id " + std::to_string(type_id));
  }
  return *info;
}

// A PackedWeight that keeps the Python object holding its source bytes alive, since a
// quantized weight may point straight into them.
struct PyPackedWeight {
  py::object owner;
  PackedWeight w;
};

ThreadPool& default_pool() {
  static ThreadPool pool(1);
  return pool;
}

py::array_t<float> py_dequantize(uint32_t type_id, const py::object& data, int64_t n) {
  const GGMLTypeInfo& info = checked_type(type_id);
  const auto type = static_cast<GGMLType>(type_id);
  RawBytes raw = raw_bytes(data);
  const int64_t need = ggml_row_bytes(type, n);
  if (raw.size < need) {
    throw std::invalid_argument(std::string("dequantize: ") + std::to_string(n) + " " + info.name +
                                " elements need " + std::to_string(need) + " bytes, got " +
                                std::to_string(raw.size));
  }
  py::array_t<float> out(n);
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    dequantize_row(type, raw.data, dst, n);
  }
  return out;
}

std::unique_ptr<PyPackedWeight> make_packed(uint32_t type_id, const py::object& data, int64_t rows, int64_t cols,
                                            const std::string& mode) {
  const GGMLTypeInfo& info = checked_type(type_id);
  const auto type = static_cast<GGMLType>(type_id);
  PackMode pm;
  if (mode == "f32") {
    pm = PackMode::kF32;
  } else if (mode == "quantized") {
    pm = PackMode::kQuantized;
  } else {
    throw std::invalid_argument("mode must be 'f32' or 'quantized', got '" + mode + "'");
  }
  RawBytes raw = raw_bytes(data);
  const int64_t need = rows * ggml_row_bytes(type, cols);
  if (raw.size < need) {
    throw std::invalid_argument(std::string("PackedWeight: ") + std::to_string(rows) + " x " +
                                std::to_string(cols) + " " + info.name + " needs " + std::to_string(need) +
                                " bytes, got " + std::to_string(raw.size));
  }
  auto pw = std::make_unique<PyPackedWeight>();
  pw->owner = raw.owner;
  {
    py::gil_scoped_release release;
    pw->w = pack_weight(type, raw.data, rows, cols, pm);
  }
  return pw;
}

py::array_t<float> py_matmul(const PyPackedWeight& pw, const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
                             ThreadPool* pool) {
  const int64_t k = pw.w.cols(), n = pw.w.rows();
  int64_t m;
  if (x.ndim() == 1 && x.shape(0) == k) {
    m = 1;
  } else if (x.ndim() == 2 && x.shape(1) == k) {
    m = x.shape(0);
  } else {
    throw std::invalid_argument("matmul: x must have shape [m, " + std::to_string(k) + "]");
  }
  py::array_t<float> y(x.ndim() == 1 ? std::vector<py::ssize_t>{n} : std::vector<py::ssize_t>{m, n});
  const float* xp = x.data();
  float* yp = y.mutable_data();
  ThreadPool& tp = pool ? *pool : default_pool();
  {
    py::gil_scoped_release release;
    matmul(pw.w, xp, m, yp, tp);
  }
  return y;
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("dequantize", &py_dequantize, py::arg("type_id"), py::arg("data"), py::arg("n"),
        "Dequantizes n elements of GGML type `type_id` from raw bytes into a float32 array.");

  m.def("ggml_type_name", [](uint32_t type_id) -> py::object {
    const GGMLTypeInfo* info = ggml_type_info(type_id);
    if (info == nullptr) return py::none();
    return py::str(info->name);
  }, py::arg("type_id"));

  m.def("fp32_to_fp16", &fp32_to_fp16, py::arg("f"));
  m.def("fp16_to_fp32", &fp16_to_fp32, py::arg("h"));

  py::class_<ThreadPool>(m, "ThreadPool")
      .def(py::init<int>(), py::arg("n_threads"))
      .def_property_readonly("size", &ThreadPool::size);

  py::class_<PyPackedWeight>(m, "PackedWeight")
      .def(py::init(&make_packed), py::arg("type_id"), py::arg("data"), py::arg("rows"), py::arg("cols"),
           py::arg("mode") = "quantized")
      .def_property_readonly("rows", [](const PyPackedWeight& p) { return p.w.rows(); })
      .def_property_readonly("cols", [](const PyPackedWeight& p) { return p.w.cols(); })
      .def_property_readonly("layout", [](const PyPackedWeight& p) { return p.w.layout(); })
      .def_property_readonly("bytes", [](const PyPackedWeight& p) { return p.w.bytes(); })
      .def("dequantize_row", [](const PyPackedWeight& p, int64_t r) {
        py::array_t<float> out(p.w.cols());
        p.w.dequantize_row(r, out.mutable_data());
        return out;
      }, py::arg("row"))
      .def("matmul", &py_matmul, py::arg("x"), py::arg("pool") = nullptr,
           "y[m, rows] = x[m, cols] @ W.T; x may also be 1-D of length cols.");

  m.def("active_isa", &active_isa, "Instruction set the kernels run on now.");
  m.def("available_isas", &available_isas, "Instruction sets this CPU can run, lowest first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Switches the kernels to another available ISA (for tests and benchmarks); ValueError if the CPU lacks it.");
}

}  // namespace g3e::binding
