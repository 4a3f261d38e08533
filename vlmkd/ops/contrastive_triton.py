"""Triton backend of the fused VLM-KD contrastive loss: ops `vlmkd::contrastive_{forward,backward}_triton`.

The plan (`contrastive_flash`, shared with the CUDA backend): u = t W^T on torch.mm, then one kernel per side
for bias + row normalisation, then a row pass and a column pass of online log-sum-exp over tiles of
S = scale v_hat u_hat^T. Backward recomputes S tiles: one pass accumulates dv_hat = scale dS u_hat, the other
du_hat = scale dS^T v_hat, then one kernel per side goes back through the normalisation and torch.mm gives
dW = du^T t. Nothing of size B x B is ever stored: the saved state is v_hat, u_hat (B x Dv), their norms and
four LSE vectors. This module holds only the launchers (through wrap_triton); `register_gpu_backend` declares
the ops.

Computes in the input dtype (float32 or float64). For float32, tl.dot uses TF32 tensor cores unless
`torch.get_float32_matmul_precision()` is "highest" (the PyTorch default), which asks for IEEE fp32.
Importing this module registers the ops; it needs triton, and never launches anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from torch.library import wrap_triton

from vlmkd.ops import contrastive_flash
from vlmkd.ops import contrastive_triton_kernels as kernels

TARGET_PROGRAMS = 512  # LSE passes split their columns until they launch about this many programs


@dataclass(frozen=True)
class _Tiling:
    """Block sizes and warps of the two passes. Chosen so that no kernel spills registers on sm_90 (checked
    by compiling for that target: ptxas resource usage), not tuned by timing yet."""

    precision: str  # tl.dot input precision
    block_m: int
    block_n: int
    lse_block_k: int
    grad_block_k: int
    block_d: int  # columns of the gradient accumulator per program; wider rows split over program_id(1)
    lse_warps: int
    grad_warps: int


def _tiling(dtype: torch.dtype, n_dims: int) -> _Tiling:
    """float64: IEEE, smaller tiles. float32: TF32 tensor cores unless matmul precision is "highest"."""
    width = max(16, triton.next_power_of_2(n_dims))
    if dtype == torch.float64:
        return _Tiling("ieee", 32, 32, min(16, width), min(16, width), min(128, width), 4, 8)
    tf32 = torch.get_float32_matmul_precision() != "highest"
    block_d = min(256 if tf32 else 128, width)
    return _Tiling("tf32" if tf32 else "ieee", 64, 64, min(32, width), min(16, width), block_d, 8, 8)


def _normalize(x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x + bias) / max(|x + bias|, eps) row-wise, and the row norms."""
    rows, cols = x.shape
    out = torch.empty_like(x)
    norm = torch.empty(rows, dtype=x.dtype, device=x.device)
    block_d = triton.next_power_of_2(cols)
    block_r = max(1, min(16, 4096 // block_d))
    wrap_triton(kernels.normalize_rows_kernel)[(triton.cdiv(rows, block_r),)](
        x, x if bias is None else bias, out, norm, rows, cols, bias is not None, block_r, block_d
    )
    return out, norm


def _normalize_backward(grad_hat: Tensor, x_hat: Tensor, norm: Tensor) -> Tensor:
    """Gradient w.r.t. the input of `_normalize` given the gradient of its output."""
    rows, cols = x_hat.shape
    grad = torch.empty_like(x_hat)
    block_d = triton.next_power_of_2(cols)
    block_r = max(1, min(16, 4096 // block_d))
    wrap_triton(kernels.normalize_rows_backward_kernel)[(triton.cdiv(rows, block_r),)](
        grad_hat, x_hat, norm, grad, rows, cols, block_r, block_d
    )
    return grad


def _lse_pass(a: Tensor, b: Tensor, labels: Tensor, scale: Tensor, class_positives: bool) -> Tensor:
    """(2, B): LSE over all columns and over positive columns of each row of scale * a b^T."""
    n, n_dims = a.shape
    tiling = _tiling(a.dtype, n_dims)
    row_blocks, col_blocks = triton.cdiv(n, tiling.block_m), triton.cdiv(n, tiling.block_n)
    # Split the columns until there are ~TARGET_PROGRAMS programs (a few waves of SMs), combined below.
    tiles_per_split = triton.cdiv(col_blocks, min(col_blocks, triton.cdiv(TARGET_PROGRAMS, row_blocks)))
    splits = triton.cdiv(col_blocks, tiles_per_split)
    partial = torch.empty(splits, 2, n, dtype=a.dtype, device=a.device)
    wrap_triton(kernels.lse_pass_kernel)[(row_blocks, splits)](
        a,
        b,
        labels,
        scale,
        partial,
        n,
        n_dims,
        tiles_per_split * tiling.block_n,
        class_positives,
        tiling.block_m,
        tiling.block_n,
        tiling.lse_block_k,
        tiling.precision,
        num_warps=tiling.lse_warps,
    )
    return partial[0] if splits == 1 else torch.logsumexp(partial, dim=0)


def _grad_pass(
    a: Tensor,
    b: Tensor,
    labels: Tensor,
    scale: Tensor,
    coef: Tensor,
    lse_a: Tensor,
    lse_b: Tensor,
    class_positives: bool,
    ds_s: Tensor | None,
) -> Tensor:
    """Gradient w.r.t. a of the loss (seen from a's rows); fills `ds_s` with sum_j dS_ij S_ij when given."""
    n, n_dims = a.shape
    grad = torch.empty_like(a)
    tiling = _tiling(a.dtype, n_dims)
    grid = (triton.cdiv(n, tiling.block_m), triton.cdiv(n_dims, tiling.block_d))
    wrap_triton(kernels.grad_pass_kernel)[grid](
        a,
        b,
        labels,
        scale,
        coef,
        lse_a,
        lse_b,
        grad,
        grad if ds_s is None else ds_s,
        n,
        n_dims,
        class_positives,
        ds_s is not None,
        tiling.block_m,
        tiling.block_n,
        tiling.grad_block_k,
        tiling.block_d,
        tiling.precision,
        num_warps=tiling.grad_warps,
    )
    return grad


_KERNELS = contrastive_flash.Kernels(_normalize, _normalize_backward, _lse_pass, _grad_pass)
contrastive_flash.register_gpu_backend("triton", _KERNELS, triton=True)
