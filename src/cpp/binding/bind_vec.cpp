// Test access to the float vector kernels (vec.h) of each instruction set.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "binding/bindings.h"
#include "kernels/vec.h"

namespace py = pybind11;

namespace g3e::binding {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

const VecOps& ops_for(const std::string& isa) {
  const VecOps* ops = vec_ops_for(isa.c_str());
  if (!ops) throw py::value_error("instruction set '" + isa + "' is not compiled into this build");
  return *ops;
}

}  // namespace

void bind_vec(py::module_& m) {
  py::module_ v = m.def_submodule("vec", "Float32 vector kernels of each instruction set, for tests");
  v.def("isa", []() { return std::string(vec_ops().isa); }, "Instruction set of the kernels in use.");
  v.def("dot", [](const std::string& isa, FloatArray a, FloatArray b) {
    if (a.size() != b.size()) throw py::value_error("a and b differ in length");
    return ops_for(isa).dot(a.data(), b.data(), a.size());
  });
  v.def("axpy", [](const std::string& isa, float alpha, FloatArray x, FloatArray y) {
    if (x.size() != y.size()) throw py::value_error("x and y differ in length");
    FloatArray out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    ops_for(isa).axpy(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
  v.def("softmax", [](const std::string& isa, FloatArray x) {
    if (x.size() < 1) throw py::value_error("x is empty");
    const VecOps& ops = ops_for(isa);
    FloatArray out(x.size());
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    float* p = out.mutable_data();
    const float sum = ops.exp_shifted(p, x.size(), ops.max(p, x.size()));
    ops.scale(1.0f / sum, p, x.size());
    return out;
  });
  v.def("rms_norm", [](const std::string& isa, FloatArray x, FloatArray w, float eps) {
    if (x.size() != w.size()) throw py::value_error("x and w differ in length");
    FloatArray out(x.size());
    ops_for(isa).rms_norm(x.data(), w.data(), out.mutable_data(), x.size(), eps);
    return out;
  });
  v.def("gelu_tanh_mul", [](const std::string& isa, FloatArray gate, FloatArray up) {
    if (gate.size() != up.size()) throw py::value_error("gate and up differ in length");
    FloatArray out(gate.size());
    std::copy(gate.data(), gate.data() + gate.size(), out.mutable_data());
    ops_for(isa).gelu_tanh_mul(out.mutable_data(), up.data(), gate.size());
    return out;
  });
  // dot_rows(isa, q (rows, n), k (count, n)) -> (rows, count); the arrays are read with their
  // row strides, so strided views exercise ldq and ldk.
  v.def("dot_rows", [](const std::string& isa, py::array_t<float> q, py::array_t<float> k) {
    if (q.ndim() != 2 || k.ndim() != 2 || q.shape(1) != k.shape(1) || q.strides(1) != 4 || k.strides(1) != 4) {
      throw py::value_error("expected q (rows, n) and k (count, n) with contiguous rows");
    }
    const int64_t rows = q.shape(0), count = k.shape(0), n = q.shape(1);
    FloatArray s({rows, count});
    ops_for(isa).dot_rows(q.data(), q.strides(0) / 4, rows, k.data(), k.strides(0) / 4, count, n, s.mutable_data(),
                          count);
    return s;
  });
  // axpy_rows(isa, p (rows, count), v (count, n), out (rows, n)) -> out + p @ v
  v.def("axpy_rows", [](const std::string& isa, FloatArray p, py::array_t<float> v, FloatArray out) {
    if (p.ndim() != 2 || v.ndim() != 2 || out.ndim() != 2 || p.shape(1) != v.shape(0) || out.shape(0) != p.shape(0) ||
        out.shape(1) != v.shape(1) || v.strides(1) != 4) {
      throw py::value_error("expected p (rows, count), v (count, n) with contiguous rows and out (rows, n)");
    }
    const int64_t rows = p.shape(0), count = p.shape(1), n = v.shape(1);
    FloatArray result({rows, n});
    std::copy(out.data(), out.data() + out.size(), result.mutable_data());
    ops_for(isa).axpy_rows(p.data(), count, rows, v.data(), v.strides(0) / 4, count, n, result.mutable_data(), n);
    return result;
  });
  v.def("sgemm", [](const std::string& isa, FloatArray w, FloatArray x) {
    if (w.ndim() != 2 || x.ndim() != 2 || w.shape(1) != x.shape(1)) {
      throw py::value_error("expected w (n, k) and x (m, k)");
    }
    const int64_t n = w.shape(0), k = w.shape(1), m = x.shape(0);
    std::vector<float> panels(static_cast<size_t>(sgemm_panel_count(n) * kSgemmPanel * k), 0.0f);
    for (int64_t r = 0; r < n; ++r) sgemm_pack_row(w.data() + r * k, r, k, panels.data());
    FloatArray y({m, n});
    ops_for(isa).sgemm(panels.data(), n, k, x.data(), m, 0, sgemm_panel_count(n), y.mutable_data(), n);
    return y;
  });
}

}  // namespace g3e::binding
