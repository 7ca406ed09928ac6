#include "binding/bindings.h"

namespace g3e::binding {

void bind_kernels(pybind11::module_& m) {}

}  // namespace g3e::binding
