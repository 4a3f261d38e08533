// vlmkd._cuda: the CUDA module. Linked against the static CUDA runtime, so it imports on machines without
// a GPU or libcudart; `device_count()` then reports 0 and `device_error()` says why.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return count;
}

std::string device_error() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaSuccess) return count > 0 ? "" : "no CUDA device";
  cudaGetLastError();
  return cudaGetErrorString(status);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "vlmkd CUDA kernels (private; use vlmkd.ops)";
  m.attr("runtime_version") = CUDART_VERSION;
  m.def("device_count", &device_count, "Number of CUDA devices visible (0 when none or no driver).");
  m.def("device_error", &device_error, "Why no CUDA device is usable ('' when one is).");
}
