"""C++/OpenMP backend of the contrastive loss: GEMMs on PyTorch's BLAS, everything else fused in `vlmkd._C`.

Importing this module registers `torch.ops.vlmkd.contrastive_forward_cpp` and `contrastive_backward_cpp`
(the backend contract of `vlmkd.ops.contrastive_backend`). Forward: u = t W^T + b (addmm), both normalisations
(v's folded with the scale), S = scale v^ u^T (mm), then one C++ call turns S into the loss and overwrites it
with dL/dS, so a single B x B buffer lives from forward to backward. Backward: two mm's, the normalisation
backward (with the bias gradient fused), one mm for the weight gradient.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vlmkd import _C
from vlmkd.ops.contrastive_backend import register_backend_ops
from vlmkd.ops.contrastive_reference import MAX_LOGIT_SCALE


def _np(x: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a contiguous CPU tensor."""
    return x.detach().numpy()


def _scale(logit_scale: torch.Tensor) -> tuple[float, bool]:
    """(exp(min(logit_scale, log 100)), whether the clamp is active), compared in logit_scale's dtype as the
    reference does; like torch.clamp's gradient, the clamp counts as active at log 100 itself."""
    value = _np(logit_scale)
    clamped = bool(value >= value.dtype.type(MAX_LOGIT_SCALE))
    return math.exp(min(float(value), MAX_LOGIT_SCALE)), clamped


def _forward(
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
    class_positives: bool,
) -> list[torch.Tensor]:
    """[loss, dL/dS, scale v^, u^, |v|, |u|, dL/dlogit_scale] for an upstream gradient of 1."""
    scale, clamped = _scale(logit_scale)
    batch = v.shape[0]
    v_scaled, v_norm, u_norm = torch.empty_like(v), v.new_empty(batch), v.new_empty(batch)
    _C.normalize_rows(_np(v), _np(v_scaled), _np(v_norm), scale)
    u_hat = torch.addmm(bias, t, weight.T)
    _C.normalize_rows(_np(u_hat), _np(u_hat), _np(u_norm))
    grad_s = torch.mm(v_scaled, u_hat.T)
    loss, grad_dot_s = _C.contrastive_grad_(_np(grad_s), _np(labels), class_positives)
    grad_logit_scale = v.new_tensor(0.0 if clamped else grad_dot_s)
    return [v.new_tensor(loss), grad_s, v_scaled, u_hat, v_norm, u_norm, grad_logit_scale]


def _fake_forward(v, t, weight, bias, logit_scale, labels, class_positives):
    batch, dim = v.shape[0], weight.shape[0]
    scalar, rows = v.new_empty(()), v.new_empty(batch)
    return [
        scalar,
        v.new_empty(batch, batch),
        v.new_empty(batch, dim),
        v.new_empty(batch, dim),
        rows,
        rows.clone(),
        scalar.clone(),
    ]


def _backward(
    grad_loss: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
    class_positives: bool,
    saved: list[torch.Tensor],
) -> list[torch.Tensor]:
    """[grad_v, grad_weight, grad_bias, grad_logit_scale] from the forward's saved tensors."""
    grad_s, v_scaled, u_hat, v_norm, u_norm, grad_logit_scale = saved
    (scale, _), upstream = _scale(logit_scale), float(grad_loss)
    grad_v = torch.mm(grad_s, u_hat)
    grad_u = torch.mm(grad_s.T, v_scaled)
    _C.normalize_rows_backward(
        _np(v_scaled), _np(grad_v), _np(v_norm), _np(grad_v), y_scale=scale, grad_scale=upstream * scale
    )
    grad_bias = torch.empty_like(bias)
    _C.normalize_rows_backward(_np(u_hat), _np(grad_u), _np(u_norm), _np(grad_u), _np(grad_bias), grad_scale=upstream)
    grad_weight = torch.mm(grad_u.T, t)
    return [grad_v, grad_weight, grad_bias, grad_loss * grad_logit_scale]


register_backend_ops("cpp", _forward, _backward, _fake_forward, device_type="cpu")
