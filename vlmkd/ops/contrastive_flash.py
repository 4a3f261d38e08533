"""The flash-style plan of the fused contrastive loss, shared by the Triton and CUDA backends.

Forward: u = t W^T on torch.mm, bias + row normalisation of each side, then a row pass and a column pass of
online log-sum-exp over tiles of S = scale v_hat u_hat^T. Backward recomputes S tiles: one pass accumulates
dv_hat = scale dS u_hat (and sum_j dS_ij S_ij for the logit-scale gradient), the other du_hat = scale dS^T v_hat,
then back through the normalisation and torch.mm gives dW = du^T t. Nothing of size B x B is stored: the saved
state is [v_hat, u_hat, v_norm, u_norm, row_lse (2, B), col_lse (2, B)]. A backend supplies only `Kernels`,
the four launchers, and declares its ops with `register_gpu_backend`; this module launches nothing itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from vlmkd.ops.contrastive_backend import register_backend_ops
from vlmkd.ops.contrastive_reference import MAX_LOGIT_SCALE


class Kernels(NamedTuple):
    """A backend's launchers, each allocating and returning its outputs.

    normalize(x, bias | None) -> (x_hat, norm): (x + bias) / max(|x + bias|, eps) row-wise, and the row norms.
    normalize_backward(grad_hat, x_hat, norm) -> gradient w.r.t. the input of `normalize`.
    lse_pass(a, b, labels, scale, class_positives) -> (2, B): LSE over all columns and over positive columns
        of each row of scale * a b^T.
    grad_pass(a, b, labels, scale, coef, lse_a, lse_b, class_positives, ds_s | None) -> gradient w.r.t. a of
        the loss (seen from a's rows); fills `ds_s` with sum_j dS_ij S_ij when given.
    """

    normalize: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]
    normalize_backward: Callable[[Tensor, Tensor, Tensor], Tensor]
    lse_pass: Callable[[Tensor, Tensor, Tensor, Tensor, bool], Tensor]
    grad_pass: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, bool, Tensor | None], Tensor]


def _scale(logit_scale: Tensor) -> Tensor:
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def forward(
    kernels: Kernels,
    v: Tensor,
    t: Tensor,
    weight: Tensor,
    bias: Tensor,
    logit_scale: Tensor,
    labels: Tensor,
    class_positives: bool,
) -> list[Tensor]:
    """[loss, v_hat, u_hat, v_norm, u_norm, row_lse (2, B), col_lse (2, B)]."""
    n = v.shape[0]
    v_hat, v_norm = kernels.normalize(v, None)
    u_hat, u_norm = kernels.normalize(torch.mm(t, weight.t()), bias)
    scale = _scale(logit_scale)
    row_lse = kernels.lse_pass(v_hat, u_hat, labels, scale, class_positives)
    col_lse = kernels.lse_pass(u_hat, v_hat, labels, scale, class_positives)
    loss = (row_lse[0] - row_lse[1] + col_lse[0] - col_lse[1]).sum() / (2 * n)
    return [loss, v_hat, u_hat, v_norm, u_norm, row_lse, col_lse]


def backward(
    kernels: Kernels,
    grad_loss: Tensor,
    v: Tensor,
    t: Tensor,
    weight: Tensor,
    bias: Tensor,
    logit_scale: Tensor,
    labels: Tensor,
    class_positives: bool,
    saved: list[Tensor],
) -> list[Tensor]:
    """[grad_v, grad_weight, grad_bias, grad_logit_scale] (the last is 0 from log 100 up, as torch.clamp gives).

    Takes the backward op's arguments; weight and bias are not needed again (`saved` holds the normalised rows)."""
    v_hat, u_hat, v_norm, u_norm, row_lse, col_lse = saved
    n = v.shape[0]
    scale = _scale(logit_scale)
    coef = grad_loss / (2 * n)
    ds_s = v.new_empty(n)
    grad_v_hat = kernels.grad_pass(v_hat, u_hat, labels, scale, coef, row_lse, col_lse, class_positives, ds_s)
    grad_u_hat = kernels.grad_pass(u_hat, v_hat, labels, scale, coef, col_lse, row_lse, class_positives, None)
    grad_v = kernels.normalize_backward(grad_v_hat, v_hat, v_norm)
    grad_u = kernels.normalize_backward(grad_u_hat, u_hat, u_norm)
    grad_logit_scale = torch.where(logit_scale < MAX_LOGIT_SCALE, ds_s.sum(), torch.zeros_like(logit_scale))
    return [grad_v, torch.mm(grad_u.t(), t), grad_u.sum(0), grad_logit_scale]


def fake_forward(v, t, weight, bias, logit_scale, labels, class_positives):
    """Shapes of `forward`'s outputs, for the ops' register_fake."""
    n, dims = v.shape
    matrix, vector, lse = (n, dims), (n,), (2, n)
    return [v.new_empty(())] + [v.new_empty(shape) for shape in (matrix, matrix, vector, vector, lse, lse)]


def register_gpu_backend(name: str, kernels: Kernels, *, triton: bool = False) -> None:
    """Declare `torch.ops.vlmkd.contrastive_{forward,backward}_<name>`: this plan run with `kernels`. Triton
    kernels go through `triton_op`; others are CUDA custom ops called with the inputs' device current (their
    raw launches use the current device and stream)."""
    register_backend_ops(
        name,
        functools.partial(forward, kernels),
        functools.partial(backward, kernels),
        fake_forward,
        device_type="cuda",
        triton=triton,
        device_guard=None if triton else torch.cuda.device,
    )
