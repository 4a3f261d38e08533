// vlmkd._C: the C++/OpenMP CPU module. Functions take and return numpy buffers (torch CPU tensors pass
// through `.numpy()` without a copy), so the module needs no libtorch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "cpu/contrastive.h"


#ifdef VLMKD_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

int max_threads() {
#ifdef VLMKD_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vlmkd C++/OpenMP CPU kernels (private; use vlmkd.ops)";
#ifdef VLMKD_WITH_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  m.def("max_threads", &max_threads, "Threads an OpenMP parallel region would use (1 without OpenMP).");
  vlmkd::bind_contrastive(m);
}
