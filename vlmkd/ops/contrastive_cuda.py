"""CUDA C++ backend of the fused VLM-KD contrastive loss: ops `vlmkd::contrastive_{forward,backward}_cuda`.

The same plan as the Triton backend (`contrastive_flash`), with the kernels of `csrc/cuda/contrastive.cu`
called through `vlmkd._cuda` on raw pointers and the current stream: t W^T and dW = du^T t stay on torch.mm,
bias + normalisation is one kernel per side, two LSE passes and two gradient passes recompute S tiles, and
nothing of size B x B is stored. Computes in the input dtype (float32 or float64) with FMA tiles; for float32
the similarity products run on TF32 tensor cores unless `torch.get_float32_matmul_precision()` is "highest"
(the PyTorch default), as in the Triton backend. Importing this module needs the built `vlmkd._cuda`, not a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmkd import _cuda
from vlmkd.ops import contrastive_flash


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _tf32(x: Tensor) -> bool:
    """Similarity products on TF32 tensor cores: float32 unless matmul precision is "highest" (the default)."""
    return x.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"


def _normalize(x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x + bias) / max(|x + bias|, eps) row-wise, and the row norms."""
    rows, cols = x.shape
    out = torch.empty_like(x)
    norm = x.new_empty(rows)
    bias_ptr = 0 if bias is None else bias.data_ptr()
    _cuda.normalize_rows(x.data_ptr(), bias_ptr, out.data_ptr(), norm.data_ptr(), rows, cols, _dtype(x), _stream())
    return out, norm


def _normalize_backward(grad_hat: Tensor, x_hat: Tensor, norm: Tensor) -> Tensor:
    """Gradient w.r.t. the input of `_normalize` given the gradient of its output."""
    rows, cols = x_hat.shape
    grad = torch.empty_like(x_hat)
    _cuda.normalize_rows_backward(
        grad_hat.data_ptr(), x_hat.data_ptr(), norm.data_ptr(), grad.data_ptr(), rows, cols, _dtype(x_hat), _stream()
    )
    return grad


def _lse_pass(a: Tensor, b: Tensor, labels: Tensor, scale: Tensor, class_positives: bool) -> Tensor:
    """(2, B): LSE over all columns and over positive columns of each row of scale * a b^T."""
    n, n_dims = a.shape
    partial = a.new_empty(_cuda.lse_pass_splits(n), 2, n)
    _cuda.lse_pass(
        a.data_ptr(),
        b.data_ptr(),
        labels.data_ptr(),
        scale.data_ptr(),
        partial.data_ptr(),
        n,
        n_dims,
        class_positives,
        _tf32(a),
        _dtype(a),
        _stream(),
    )
    return partial[0] if partial.shape[0] == 1 else torch.logsumexp(partial, dim=0)


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
    _cuda.grad_pass(
        a.data_ptr(),
        b.data_ptr(),
        labels.data_ptr(),
        scale.data_ptr(),
        coef.data_ptr(),
        lse_a.data_ptr(),
        lse_b.data_ptr(),
        grad.data_ptr(),
        0 if ds_s is None else ds_s.data_ptr(),
        n,
        n_dims,
        class_positives,
        _tf32(a),
        _dtype(a),
        _stream(),
    )
    return grad


_KERNELS = contrastive_flash.Kernels(_normalize, _normalize_backward, _lse_pass, _grad_pass)
contrastive_flash.register_gpu_backend("cuda", _KERNELS)
