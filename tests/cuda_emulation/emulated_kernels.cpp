// The kernels of csrc/cuda/contrastive_kernels.cuh on the CPU emulator, behind a C API with the same
// arguments as the vlmkd._cuda entry points, except that the tf32 flag folds into dtype (0 = float32,
// 1 = float64, 2 = float32 on TF32 tensor cores), pointers are host addresses and there is no stream. Built
// and loaded by tests/test_contrastive_cuda.py.
#include <exception>
#include <string>

#include "cuda/contrastive_kernels.cuh"

using namespace vlmkd::cuda::detail;

namespace {

template <typename T>
T* as(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

template <typename T>
void normalize_rows(uintptr_t x, uintptr_t bias, uintptr_t out, uintptr_t norm, int64_t rows, int64_t cols) {
  emu::launch(normalize_grid(rows), kNormThreads, [&] {
    normalize_rows_kernel<T>(as<const T>(x), as<const T>(bias), as<T>(out), as<T>(norm), rows, cols);
  });
}

template <typename T>
void normalize_rows_backward(uintptr_t grad_hat, uintptr_t x_hat, uintptr_t norm, uintptr_t grad, int64_t rows,
                             int64_t cols) {
  emu::launch(normalize_grid(rows), kNormThreads, [&] {
    normalize_rows_backward_kernel<T>(as<const T>(grad_hat), as<const T>(x_hat), as<const T>(norm), as<T>(grad),
                                      rows, cols);
  });
}

template <typename T, bool kTF32>
void lse_pass(uintptr_t a, uintptr_t b, uintptr_t labels, uintptr_t scale, uintptr_t partial, int64_t n, int64_t d,
              bool class_positives) {
  emu::launch(lse_pass_grid(n), kThreads, [&] {
    lse_pass_kernel<T, kTF32>(as<const T>(a), as<const T>(b), as<const int64_t>(labels), as<const T>(scale),
                       as<T>(partial), n, d, lse_tiles_per_split(n) * kTile, class_positives);
  });
}

template <typename T, bool kTF32>
void grad_pass(uintptr_t a, uintptr_t b, uintptr_t labels, uintptr_t scale, uintptr_t coef, uintptr_t lse_a,
               uintptr_t lse_b, uintptr_t grad_a, uintptr_t ds_s, int64_t n, int64_t d, bool class_positives) {
  emu::launch(grad_pass_grid<T>(n, d), kThreads, [&] {
    grad_pass_kernel<T, kTF32>(as<const T>(a), as<const T>(b), as<const int64_t>(labels), as<const T>(scale),
                        as<const T>(coef), as<const T>(lse_a), as<const T>(lse_b), as<T>(grad_a), as<T>(ds_s), n, d,
                        class_positives);
  });
}

std::string last_error;

// Runs `launch`; returns 0, or 1 with the message kept for emu_last_error (no exception crosses into C).
template <typename Launch>
int guarded(Launch launch) {
  try {
    launch();
    return 0;
  } catch (const std::exception& error) {
    last_error = error.what();
    return 1;
  }
}

}  // namespace

extern "C" {

const char* emu_last_error() { return last_error.c_str(); }

int emu_lse_pass_splits(int64_t n) { return n <= 0 ? 1 : static_cast<int>(lse_pass_grid(n).y); }

int emu_normalize_rows(uintptr_t x, uintptr_t bias, uintptr_t out, uintptr_t norm, int64_t rows, int64_t cols,
                        int dtype) {
  return guarded([&] { (dtype ? normalize_rows<double> : normalize_rows<float>)(x, bias, out, norm, rows, cols); });
}

int emu_normalize_rows_backward(uintptr_t grad_hat, uintptr_t x_hat, uintptr_t norm, uintptr_t grad, int64_t rows,
                                 int64_t cols, int dtype) {
  return guarded([&] {
    (dtype ? normalize_rows_backward<double> : normalize_rows_backward<float>)(grad_hat, x_hat, norm, grad, rows, cols);
  });
}

// dtype 0: float32, 1: float64, 2: float32 on (emulated) TF32 tensor cores.
int emu_lse_pass(uintptr_t a, uintptr_t b, uintptr_t labels, uintptr_t scale, uintptr_t partial, int64_t n,
                 int64_t d, bool class_positives, int dtype) {
  const auto run = dtype == 0 ? lse_pass<float, false> : dtype == 1 ? lse_pass<double, false> : lse_pass<float, true>;
  return guarded([&] { run(a, b, labels, scale, partial, n, d, class_positives); });
}

int emu_grad_pass(uintptr_t a, uintptr_t b, uintptr_t labels, uintptr_t scale, uintptr_t coef, uintptr_t lse_a,
                   uintptr_t lse_b, uintptr_t grad_a, uintptr_t ds_s, int64_t n, int64_t d, bool class_positives,
                   int dtype) {
  const auto run =
      dtype == 0 ? grad_pass<float, false> : dtype == 1 ? grad_pass<double, false> : grad_pass<float, true>;
  return guarded([&] { run(a, b, labels, scale, coef, lse_a, lse_b, grad_a, ds_s, n, d, class_positives); });
}

}  // extern "C"
