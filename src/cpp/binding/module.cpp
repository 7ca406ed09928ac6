#include "binding/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "gemma3-edge C++ runtime (private; use the gemma3_edge package)";
  g3e::binding::bind_kernels(m);
  g3e::binding::bind_tokenizer(m);
  g3e::binding::bind_model(m);
  g3e::binding::bind_vec(m);
  g3e::binding::bind_vision(m);
}
