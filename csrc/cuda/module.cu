// vlmkd._cuda: the CUDA module. Linked against the static CUDA runtime, so it imports on machines without
// a GPU or libcudart; `device_count()` then reports 0, `device_error()` says why, and every kernel entry
// point raises RuntimeError instead of launching.
//
// Kernel entry points take raw device pointers (Python ints, e.g. `tensor.data_ptr()`), sizes, the dtype
// name ("float32" or "float64") and a cudaStream_t as an int (`torch.cuda.current_stream().cuda_stream`);
// no libtorch is involved. Buffers must be contiguous, row-major and on the current device.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda/contrastive.cuh"

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
  if (status == cudaErrorNoDevice) return "no CUDA device";
  // Without any NVIDIA driver the runtime says "CUDA driver version is insufficient for CUDA runtime
  // version"; the driver version it then reports is 0. That machine has no device, not an old driver.
  int driver = 0;
  if (status == cudaErrorInsufficientDriver && (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0))
    return "no CUDA device (no NVIDIA driver installed)";
  return cudaGetErrorString(status);
}

enum class DType { kFloat32, kFloat64 };

// Checks shared by every kernel entry point; each failure names the offending argument.
void require_device(const char* function) {
  if (device_count() == 0)
    throw std::runtime_error(std::string("vlmkd._cuda.") + function + ": no usable CUDA device (" + device_error() +
                             ")");
}

DType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return DType::kFloat32;
  if (dtype == "float64") return DType::kFloat64;
  throw py::value_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

struct Pointer {
  std::uintptr_t address;
  const char* name;
};

// Raises ValueError naming the first null pointer among those that are required.
void require_pointers(std::initializer_list<Pointer> pointers) {
  for (const Pointer& p : pointers)
    if (p.address == 0) throw py::value_error(std::string(p.name) + " must be a device pointer, got 0");
}

template <typename T>
T* as(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void require_size(int64_t value, const char* name) {
  if (value < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(value));
}

void check_launch(cudaError_t status, const char* function) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("vlmkd._cuda.") + function + ": " + cudaGetErrorString(status));
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void normalize_rows(std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, std::uintptr_t norm, int64_t rows,
                    int64_t cols, const std::string& dtype, std::uintptr_t stream) {
  require_size(rows, "rows");
  require_size(cols, "cols");
  const DType kind = parse_dtype(dtype);
  require_pointers({{x, "x"}, {out, "out"}, {norm, "norm"}});
  require_device("normalize_rows");
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    return vlmkd::cuda::normalize_rows<T>(as<const T>(x), as<const T>(bias), as<T>(out), as<T>(norm), rows, cols,
                                          as_stream(stream));
  };
  check_launch(kind == DType::kFloat32 ? run(float{}) : run(double{}), "normalize_rows");
}

void normalize_rows_backward(std::uintptr_t grad_hat, std::uintptr_t x_hat, std::uintptr_t norm,
                             std::uintptr_t grad, int64_t rows, int64_t cols, const std::string& dtype,
                             std::uintptr_t stream) {
  require_size(rows, "rows");
  require_size(cols, "cols");
  const DType kind = parse_dtype(dtype);
  require_pointers({{grad_hat, "grad_hat"}, {x_hat, "x_hat"}, {norm, "norm"}, {grad, "grad"}});
  require_device("normalize_rows_backward");
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    return vlmkd::cuda::normalize_rows_backward<T>(as<const T>(grad_hat), as<const T>(x_hat), as<const T>(norm),
                                                   as<T>(grad), rows, cols, as_stream(stream));
  };
  check_launch(kind == DType::kFloat32 ? run(float{}) : run(double{}), "normalize_rows_backward");
}

void require_tf32_dtype(bool tf32, DType kind) {
  if (tf32 && kind != DType::kFloat32) throw py::value_error("tf32 applies to float32 only");
}

void lse_pass(std::uintptr_t a, std::uintptr_t b, std::uintptr_t labels, std::uintptr_t scale,
              std::uintptr_t partial, int64_t n, int64_t d, bool class_positives, bool tf32, const std::string& dtype,
              std::uintptr_t stream) {
  require_size(n, "n");
  require_size(d, "d");
  const DType kind = parse_dtype(dtype);
  require_tf32_dtype(tf32, kind);
  require_pointers({{a, "a"}, {b, "b"}, {labels, "labels"}, {scale, "scale"}, {partial, "partial"}});
  require_device("lse_pass");
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    return vlmkd::cuda::lse_pass<T>(as<const T>(a), as<const T>(b), as<const int64_t>(labels), as<const T>(scale),
                                    as<T>(partial), n, d, class_positives, tf32, as_stream(stream));
  };
  check_launch(kind == DType::kFloat32 ? run(float{}) : run(double{}), "lse_pass");
}

void grad_pass(std::uintptr_t a, std::uintptr_t b, std::uintptr_t labels, std::uintptr_t scale, std::uintptr_t coef,
               std::uintptr_t lse_a, std::uintptr_t lse_b, std::uintptr_t grad_a, std::uintptr_t ds_s, int64_t n,
               int64_t d, bool class_positives, bool tf32, const std::string& dtype, std::uintptr_t stream) {
  require_size(n, "n");
  require_size(d, "d");
  const DType kind = parse_dtype(dtype);
  require_tf32_dtype(tf32, kind);
  require_pointers({{a, "a"},
                    {b, "b"},
                    {labels, "labels"},
                    {scale, "scale"},
                    {coef, "coef"},
                    {lse_a, "lse_a"},
                    {lse_b, "lse_b"},
                    {grad_a, "grad_a"}});
  require_device("grad_pass");
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    return vlmkd::cuda::grad_pass<T>(as<const T>(a), as<const T>(b), as<const int64_t>(labels), as<const T>(scale),
                                     as<const T>(coef), as<const T>(lse_a), as<const T>(lse_b), as<T>(grad_a),
                                     as<T>(ds_s), n, d, class_positives, tf32, as_stream(stream));
  };
  check_launch(kind == DType::kFloat32 ? run(float{}) : run(double{}), "grad_pass");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "vlmkd CUDA kernels (private; use vlmkd.ops)";
  m.attr("runtime_version") = CUDART_VERSION;
  m.def("device_count", &device_count, "Number of CUDA devices visible (0 when none or no driver).");
  m.def("device_error", &device_error, "Why no CUDA device is usable ('' when one is).");
  m.def("normalize_rows", &normalize_rows, py::arg("x"), py::arg("bias"), py::arg("out"), py::arg("norm"),
        py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("stream"),
        "out = (x + bias) / max(|x + bias|, 1e-12) row-wise, norm = |x + bias| (bias may be 0: none).");
  m.def("normalize_rows_backward", &normalize_rows_backward, py::arg("grad_hat"), py::arg("x_hat"), py::arg("norm"),
        py::arg("grad"), py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("stream"),
        "Gradient back through normalize_rows given the gradient of its output.");
  m.def("lse_pass_splits", &vlmkd::cuda::lse_pass_splits, py::arg("n"),
        "Number of column splits lse_pass writes for n rows (its partial buffer is splits x 2 x n).");
  m.def("lse_pass", &lse_pass, py::arg("a"), py::arg("b"), py::arg("labels"), py::arg("scale"), py::arg("partial"),
        py::arg("n"), py::arg("d"), py::arg("class_positives"), py::arg("tf32"), py::arg("dtype"), py::arg("stream"),
        "Per column split, LSE over all and over positive columns of each row of scale * a b^T (tf32: tensor "
        "cores).");
  m.def("grad_pass", &grad_pass, py::arg("a"), py::arg("b"), py::arg("labels"), py::arg("scale"), py::arg("coef"),
        py::arg("lse_a"), py::arg("lse_b"), py::arg("grad_a"), py::arg("ds_s"), py::arg("n"), py::arg("d"),
        py::arg("class_positives"), py::arg("tf32"), py::arg("dtype"), py::arg("stream"),
        "grad_a = scale * dS @ b, recomputing S = scale * a b^T tile by tile; ds_s (may be 0) = rows of dS*S "
        "(tf32: tensor cores).");
}
