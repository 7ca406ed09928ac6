// Each part of the extension module registers its classes and functions in its own file.
#pragma once

#include <pybind11/pybind11.h>

namespace g3e::binding {

void bind_kernels(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_vec(pybind11::module_& m);
void bind_vision(pybind11::module_& m);

}  // namespace g3e::binding
