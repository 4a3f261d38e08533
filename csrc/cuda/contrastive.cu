// Fused VLM-KD contrastive loss on CUDA: the launchers (see contrastive.cuh for the contract of each entry
// point, contrastive_kernels.cuh for the kernels and their tiling).
#include <type_traits>

#include "cuda/contrastive.cuh"
#include "cuda/contrastive_kernels.cuh"

namespace vlmkd::cuda {

using namespace detail;

int lse_pass_splits(int64_t n) { return n <= 0 ? 1 : static_cast<int>(lse_pass_grid(n).y); }

template <typename T>
cudaError_t normalize_rows(const T* x, const T* bias, T* out, T* norm, int64_t rows, int64_t cols,
                           cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  normalize_rows_kernel<T><<<normalize_grid(rows), kNormThreads, 0, stream>>>(x, bias, out, norm, rows, cols);
  return cudaGetLastError();
}

template <typename T>
cudaError_t normalize_rows_backward(const T* grad_hat, const T* x_hat, const T* norm, T* grad, int64_t rows,
                                    int64_t cols, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  normalize_rows_backward_kernel<T>
      <<<normalize_grid(rows), kNormThreads, 0, stream>>>(grad_hat, x_hat, norm, grad, rows, cols);
  return cudaGetLastError();
}

template <typename T>
cudaError_t lse_pass(const T* a, const T* b, const int64_t* labels, const T* scale, T* partial, int64_t n,
                     int64_t d, bool class_positives, bool tf32, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const auto launch = [&](auto kernel) {
    kernel<<<lse_pass_grid(n), kThreads, 0, stream>>>(a, b, labels, scale, partial, n, d,
                                                       lse_tiles_per_split(n) * kTile, class_positives);
  };
  if constexpr (std::is_same_v<T, float>) {
    if (tf32) {
      launch(lse_pass_kernel<T, true>);
      return cudaGetLastError();
    }
  }
  launch(lse_pass_kernel<T, false>);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_pass(const T* a, const T* b, const int64_t* labels, const T* scale, const T* coef, const T* lse_a,
                      const T* lse_b, T* grad_a, T* ds_s, int64_t n, int64_t d, bool class_positives, bool tf32,
                      cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  const auto launch = [&](auto kernel) {
    kernel<<<grad_pass_grid<T>(n, d), kThreads, 0, stream>>>(a, b, labels, scale, coef, lse_a, lse_b, grad_a, ds_s,
                                                              n, d, class_positives);
  };
  if constexpr (std::is_same_v<T, float>) {
    if (tf32) {
      launch(grad_pass_kernel<T, true>);
      return cudaGetLastError();
    }
  }
  launch(grad_pass_kernel<T, false>);
  return cudaGetLastError();
}

#define VLMKD_INSTANTIATE(T)                                                                                       \
  template cudaError_t normalize_rows<T>(const T*, const T*, T*, T*, int64_t, int64_t, cudaStream_t);             \
  template cudaError_t normalize_rows_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t,            \
                                                  cudaStream_t);                                                \
  template cudaError_t lse_pass<T>(const T*, const T*, const int64_t*, const T*, T*, int64_t, int64_t, bool,      \
                                   bool, cudaStream_t);                                                         \
  template cudaError_t grad_pass<T>(const T*, const T*, const int64_t*, const T*, const T*, const T*, const T*, \
                                    T*, T*, int64_t, int64_t, bool, bool, cudaStream_t);

VLMKD_INSTANTIATE(float)
VLMKD_INSTANTIATE(double)
#undef VLMKD_INSTANTIATE

}  // namespace vlmkd::cuda
