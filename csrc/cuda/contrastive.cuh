// Fused VLM-KD contrastive loss on CUDA: the kernels behind torch.ops.vlmkd.contrastive_*_cuda.
//
// Same plan as the Triton backend (vlmkd/ops/contrastive_triton_kernels.py): row normalisation forward/backward, and two
// flash-style passes over S = scale * A B^T that never store the B x B matrix. The column pass is the row
// pass of S^T (the same kernel with A and B swapped). Every function takes device pointers to row-major,
// contiguous buffers, launches on `stream` and returns the launch status; T is float or double, computed in
// T throughout (FMA tiles), except that float similarity products may run on tensor cores in TF32 when
// asked (`tf32`). `scale` and `coef` point to device scalars, so nothing here synchronises with the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vlmkd::cuda {

// out = y / max(|y|, 1e-12) row-wise with y = x (+ bias when not null); norm[r] = |y_r|.
template <typename T>
cudaError_t normalize_rows(const T* x, const T* bias, T* out, T* norm, int64_t rows, int64_t cols,
                           cudaStream_t stream);

// grad = (g - x_hat <x_hat, g>) / |x| per row (g / 1e-12 where |x| <= 1e-12): back through normalize_rows.
template <typename T>
cudaError_t normalize_rows_backward(const T* grad_hat, const T* x_hat, const T* norm, T* grad, int64_t rows,
                                    int64_t cols, cudaStream_t stream);

// Number of column splits lse_pass uses for n rows (it writes splits x 2 x n partial LSEs).
int lse_pass_splits(int64_t n);

// partial[c][0][i] = LSE over the columns j of split c of S_ij, partial[c][1][i] = the same over positive j
// (labels[i] == labels[j] when class_positives, else j == i); -inf where a split has none. The caller
// log-sum-exps the splits. tf32 (float only): S tiles on tensor cores, operands rounded to TF32.
template <typename T>
cudaError_t lse_pass(const T* a, const T* b, const int64_t* labels, const T* scale, T* partial, int64_t n,
                     int64_t d, bool class_positives, bool tf32, cudaStream_t stream);

// grad_a = scale * dS @ B with dS_ij = coef [exp(S_ij - la_i) + exp(S_ij - lb_j)
//          - pos_ij (exp(S_ij - pa_i) + exp(S_ij - pb_j))], lse_a = [la; pa], lse_b = [lb; pb] (2 x n each).
// When ds_s is not null it also receives sum_j dS_ij S_ij per row (the logit-scale gradient, summed by the
// caller). tf32 (float only): both products on tensor cores, operands rounded to TF32.
template <typename T>
cudaError_t grad_pass(const T* a, const T* b, const int64_t* labels, const T* scale, const T* coef, const T* lse_a,
                      const T* lse_b, T* grad_a, T* ds_s, int64_t n, int64_t d, bool class_positives, bool tf32,
                      cudaStream_t stream);

}  // namespace vlmkd::cuda
