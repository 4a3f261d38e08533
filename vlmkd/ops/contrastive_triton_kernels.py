"""Raw Triton kernels of the fused VLM-KD contrastive loss; `contrastive_triton` launches them.

Row-normalisation forward/backward, and two flash-style passes over the B x B similarity matrix that never
store it: `lse_pass_kernel` (online log-sum-exp over all and over positive columns of each row) and
`grad_pass_kernel` (recomputes S tiles and accumulates dS @ B for one side). Both passes serve rows and
columns alike: the column pass is the row pass of S^T, i.e. the same kernel with the two operands swapped.
Every kernel computes in the dtype of its inputs (float32, or float64).
"""

from __future__ import annotations

import triton
import triton.language as tl

NORM_EPS: tl.constexpr = tl.constexpr(1e-12)  # as in torch.nn.functional.normalize


@triton.jit
def normalize_rows_kernel(
    x_ptr,
    bias_ptr,
    out_ptr,
    norm_ptr,
    n_rows,
    n_cols,
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out = y / max(|y|, eps) with y = x (+ bias); also stores |y| per row. BLOCK_D covers a whole row."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < n_cols
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if HAS_BIAS:
        x = tl.where(mask, x + tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :], 0.0)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    tl.store(out_ptr + offsets, x / tl.maximum(norm, NORM_EPS)[:, None], mask=mask)
    tl.store(norm_ptr + rows, norm, mask=rows < n_rows)


@triton.jit
def normalize_rows_backward_kernel(
    grad_hat_ptr,
    x_hat_ptr,
    norm_ptr,
    grad_ptr,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradient through x_hat = x / max(|x|, eps): (g - x_hat <x_hat, g>) / |x|, or g / eps below eps."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    g = tl.load(grad_hat_ptr + offsets, mask=mask, other=0.0)
    x_hat = tl.load(x_hat_ptr + offsets, mask=mask, other=0.0)
    norm = tl.load(norm_ptr + rows, mask=row_ok, other=1.0)
    radial = tl.sum(x_hat * g, axis=1)
    above = (norm > NORM_EPS)[:, None]
    grad = tl.where(above, g - x_hat * radial[:, None], g) / tl.maximum(norm, NORM_EPS)[:, None]
    tl.store(grad_ptr + offsets, grad, mask=mask)


@triton.jit
def _similarity_tile(
    a_ptr,
    b_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    n_dims,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """A[rows] @ B[cols]^T for row-major A, B of width n_dims, accumulated over K chunks in their dtype."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=a_ptr.dtype.element_ty)
    ks = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * n_dims
    b_cols = b_ptr + cols.to(tl.int64)[None, :] * n_dims
    for k0 in range(0, n_dims, BLOCK_K):
        k = k0 + ks
        k_ok = k < n_dims
        a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_cols + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _positive_mask(labels_ptr, rows, cols, row_ok, col_ok, CLASS_POSITIVES: tl.constexpr):
    """(rows x cols) mask of positive pairs among valid ones: same label, or the diagonal."""
    valid = row_ok[:, None] & col_ok[None, :]
    if CLASS_POSITIVES:
        row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
        col_labels = tl.load(labels_ptr + cols, mask=col_ok, other=0)
        same = row_labels[:, None] == col_labels[None, :]
    else:
        same = rows[:, None] == cols[None, :]
    return valid, valid & same


@triton.jit
def lse_pass_kernel(
    a_ptr,
    b_ptr,
    labels_ptr,
    scale_ptr,
    lse_ptr,
    n,
    n_dims,
    cols_per_split,
    CLASS_POSITIVES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """For rows i of S = scale A B^T and the columns j of split c = program_id(1):
    lse[c, 0, i] = LSE_j S_ij and lse[c, 1, i] = LSE_{j in pos(i)} S_ij (-inf where the split has none).

    Online max/sum over column tiles. Running maxima start at -scale, a lower bound of every S_ij for unit
    rows, so they stay finite and no -inf - -inf appears for rows whose positives come in a later tile.
    Splitting the columns gives small batches enough programs; the caller log-sum-exps the splits.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    split = tl.program_id(1)
    scale = tl.load(scale_ptr)
    dtype = a_ptr.dtype.element_ty
    max_all = tl.zeros((BLOCK_M,), dtype=dtype) - scale
    max_pos = tl.zeros((BLOCK_M,), dtype=dtype) - scale
    sum_all = tl.zeros((BLOCK_M,), dtype=dtype)
    sum_pos = tl.zeros((BLOCK_M,), dtype=dtype)
    for n0 in range(split * cols_per_split, tl.minimum(n, (split + 1) * cols_per_split), BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        s = scale * _similarity_tile(
            a_ptr, b_ptr, rows, cols, row_ok, col_ok, n_dims, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION
        )
        valid, positive = _positive_mask(labels_ptr, rows, cols, row_ok, col_ok, CLASS_POSITIVES)
        s_all = tl.where(valid, s, float("-inf"))
        s_pos = tl.where(positive, s, float("-inf"))
        new_all = tl.maximum(max_all, tl.max(s_all, axis=1))
        new_pos = tl.maximum(max_pos, tl.max(s_pos, axis=1))
        sum_all = sum_all * tl.exp(max_all - new_all) + tl.sum(tl.exp(s_all - new_all[:, None]), axis=1)
        sum_pos = sum_pos * tl.exp(max_pos - new_pos) + tl.sum(tl.exp(s_pos - new_pos[:, None]), axis=1)
        max_all = new_all
        max_pos = new_pos
    out = lse_ptr + split * 2 * n + rows
    tl.store(out, _log_sum(max_all, sum_all), mask=row_ok)
    tl.store(out + n, _log_sum(max_pos, sum_pos), mask=row_ok)


@triton.jit
def _log_sum(maximum, total):
    """maximum + log(total), -inf for an empty sum (without evaluating log(0))."""
    return tl.where(total > 0, maximum + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))


@triton.jit
def grad_pass_kernel(
    a_ptr,
    b_ptr,
    labels_ptr,
    scale_ptr,
    coef_ptr,
    lse_a_ptr,
    lse_b_ptr,
    grad_a_ptr,
    ds_s_ptr,
    n,
    n_dims,
    CLASS_POSITIVES: tl.constexpr,
    WITH_DS_S: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """grad_a[rows, d-block] = scale * dS @ B[:, d-block] with S = scale A B^T recomputed tile by tile.

    dS_ij = coef [exp(S_ij - la_i) + exp(S_ij - lb_j) - pos_ij (exp(S_ij - pa_i) + exp(S_ij - pb_j))], where
    (la, pa) and (lb, pb) are the all/positive LSEs of the rows of S and of S^T. With WITH_DS_S, also stores
    sum_j dS_ij S_ij per row (the logit-scale gradient, summed by the caller).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    dcols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dcol_ok = dcols < n_dims
    scale = tl.load(scale_ptr)
    coef = tl.load(coef_ptr)
    dtype = a_ptr.dtype.element_ty
    row_all = tl.load(lse_a_ptr + rows, mask=row_ok, other=0.0)
    row_pos = tl.load(lse_a_ptr + n + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=dtype)
    ds_s = tl.zeros((BLOCK_M,), dtype=dtype)
    for n0 in range(0, n, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        s = scale * _similarity_tile(
            a_ptr, b_ptr, rows, cols, row_ok, col_ok, n_dims, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION
        )
        valid, positive = _positive_mask(labels_ptr, rows, cols, row_ok, col_ok, CLASS_POSITIVES)
        col_all = tl.load(lse_b_ptr + cols, mask=col_ok, other=0.0)
        col_pos = tl.load(lse_b_ptr + n + cols, mask=col_ok, other=0.0)
        prob = tl.exp(s - row_all[:, None]) + tl.exp(s - col_all[None, :])
        # Off the positives exp(s - lse_pos) could overflow (up to e^(2 scale)): mask s first, exp(-inf) = 0.
        s_pos = tl.where(positive, s, float("-inf"))
        prob_pos = tl.exp(s_pos - row_pos[:, None]) + tl.exp(s_pos - col_pos[None, :])
        ds = tl.where(valid, coef * (prob - prob_pos), 0.0)
        if WITH_DS_S:
            ds_s += tl.sum(ds * s, axis=1)
        b = tl.load(
            b_ptr + cols.to(tl.int64)[:, None] * n_dims + dcols[None, :],
            mask=col_ok[:, None] & dcol_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(ds.to(dtype), b, acc, input_precision=PRECISION)
    offsets = rows.to(tl.int64)[:, None] * n_dims + dcols[None, :]
    tl.store(grad_a_ptr + offsets, scale * acc, mask=row_ok[:, None] & dcol_ok[None, :])
    if WITH_DS_S:
        tl.store(ds_s_ptr + rows, ds_s, mask=row_ok & (tl.program_id(1) == 0))
