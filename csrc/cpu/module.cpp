// pybind11 module pyinterp._C: each op family registers its functions from its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace pyinterp {
void register_solu(py::module_& m);
void register_sae(py::module_& m);
void register_persona(py::module_& m);
void register_attention(py::module_& m);
void register_multi_decode(py::module_& m);
}  // namespace pyinterp

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyinterp C++ CPU kernels (OpenMP); tensors are passed as data pointers";
  pyinterp::register_solu(m);
  pyinterp::register_attention(m);
  pyinterp::register_sae(m);
  pyinterp::register_persona(m);
  pyinterp::register_multi_decode(m);
}
