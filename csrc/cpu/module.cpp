// vlmkd._C: the C++/OpenMP CPU module. Functions take and return numpy buffers (torch CPU tensors pass
// through `.numpy()` without a copy), so the module needs no libtorch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "cpu/contrastive.h"

#include <cmath>
#include <stdexcept>
#include <string>

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

// Rows of a float32 (N, D) array scaled to unit L2 norm (eps guards zero rows). The smallest real kernel:
// the build tests use it to prove a buffer makes the round trip Python -> C++ -> Python intact.
py::array_t<float> l2_normalize_rows(
    py::array_t<float, py::array::c_style | py::array::forcecast> x, float eps) {
  if (x.ndim() != 2) {
    throw std::invalid_argument("x must be a 2-D (N, D) array, got " + std::to_string(x.ndim()) + " dims");
  }
  const py::ssize_t rows = x.shape(0), cols = x.shape(1);
  py::array_t<float> out({rows, cols});
  const float* src = x.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
    for (py::ssize_t r = 0; r < rows; ++r) {
      const float* in_row = src + r * cols;
      float* out_row = dst + r * cols;
      double sum_sq = 0.0;
      for (py::ssize_t c = 0; c < cols; ++c) sum_sq += double(in_row[c]) * in_row[c];
      const float inv = 1.0f / std::fmax(float(std::sqrt(sum_sq)), eps);
      for (py::ssize_t c = 0; c < cols; ++c) out_row[c] = in_row[c] * inv;
    }
  }
  return out;
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
  m.def("l2_normalize_rows", &l2_normalize_rows, py::arg("x"), py::arg("eps") = 1e-12f,
        "Return float32 (N, D) rows scaled to unit L2 norm.");
  vlmkd::bind_contrastive(m);
}
