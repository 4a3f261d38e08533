"""The VLM-KD contrastive loss as a function: the public op, backend dispatch and the autograd Function.

Backends (see `vlmkd.backends()`): "reference" (`contrastive_ref`, plain PyTorch autograd), "cpp" (C++/OpenMP on
CPU), "triton" (GPU, or CPU under TRITON_INTERPRET=1) and "cuda". Each fused backend module registers
`torch.ops.vlmkd.contrastive_forward_<b>` / `contrastive_backward_<b>` (the contract of
`vlmkd.ops.contrastive_backend`); this module checks the inputs once, brings them to one dtype (fp16/bf16
computed in fp32), and wraps the pair in an autograd.Function, which `torch.compile(fullgraph=True)` traces
through.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from vlmkd.backends import BACKENDS, triton_interpret
from vlmkd.errors import InputError
from vlmkd.ops.contrastive_backend import backend_ops
from vlmkd.ops.contrastive_reference import POSITIVES, contrastive_ref

REFERENCE = "reference"


@functools.cache
def _unusable_reason(name: str, device_type: str, interpret: bool) -> str | None:
    """Why backend `name` cannot run on `device_type` tensors here (None when it can); imports its ops."""
    backend = BACKENDS.get(name)
    if backend.ops_module is None:
        return None
    status = backend.status()
    if not status.usable:
        return status.detail
    problem = backend.device_problem(device_type, interpret)
    if problem is not None:
        return problem
    try:
        importlib.import_module(backend.ops_module)
    except ImportError as error:
        return f"{backend.ops_module} did not import: {error}"
    return None


def _auto_order(device_type: str) -> list[str]:
    """Backends picked automatically on `device_type`, fastest (highest priority) first."""
    chosen = [name for name in BACKENDS if device_type in BACKENDS.get(name).auto_devices]
    return sorted(chosen, key=lambda name: -BACKENDS.get(name).priority) or [REFERENCE]


@torch.compiler.assume_constant_result
def resolve_backend(device_type: str, requested: str | None = None) -> str:
    """The backend to use for tensors on `device_type`: `requested`, else $VLMKD_BACKEND, else the fastest usable.

    Raises InputError for an unknown name or a backend that cannot run here, saying why. Under torch.compile
    the answer is fixed when the graph is traced.
    """
    source = "backend"
    if requested is None and os.environ.get("VLMKD_BACKEND"):
        requested, source = os.environ["VLMKD_BACKEND"], "VLMKD_BACKEND"
    interpret = triton_interpret()
    if requested is None:
        order = _auto_order(device_type)
        return next(name for name in order if _unusable_reason(name, device_type, interpret) is None)
    BACKENDS.check(requested, source)
    reason = _unusable_reason(requested, device_type, interpret)
    if reason is not None:
        raise InputError(f"{source}={requested!r} cannot run here: {reason}")
    return requested


class _FusedContrastive(torch.autograd.Function):
    """Autograd around a backend's forward/backward ops; t and labels get no gradient."""

    @staticmethod
    def forward(ctx, v, t, weight, bias, logit_scale, labels, class_positives: bool, backend: str):
        forward_op, _ = backend_ops(backend)
        with torch.autocast(v.device.type, enabled=False):
            loss, *saved = forward_op(v, t, weight, bias, logit_scale, labels, class_positives)
        ctx.save_for_backward(v, t, weight, bias, logit_scale, labels, *saved)
        ctx.class_positives, ctx.backend = class_positives, backend
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        v, t, weight, bias, logit_scale, labels, *saved = ctx.saved_tensors
        _, backward_op = backend_ops(ctx.backend)
        with torch.autocast(v.device.type, enabled=False):
            grad_v, grad_weight, grad_bias, grad_logit_scale = backward_op(
                grad_loss, v, t, weight, bias, logit_scale, labels, ctx.class_positives, saved
            )
        return grad_v, None, grad_weight, grad_bias, grad_logit_scale, None, None, None


def _describe(x: torch.Tensor) -> str:
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"


def _check_inputs(
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None,
    class_positives: bool,
) -> None:
    """Raise InputError naming the first argument whose shape, dtype or device is wrong."""
    named = {"v": v, "t": t, "weight": weight, "logit_scale": logit_scale}
    if bias is not None:
        named["bias"] = bias
    for name, x in named.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = _describe(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{name} must be a floating-point tensor, got {got}")
    if v.dim() != 2 or v.shape[0] == 0:
        raise InputError(f"v must be (B, Dv) with B >= 1, got {tuple(v.shape)}")
    batch, dim = v.shape
    if t.dim() != 2 or t.shape[0] != batch:
        raise InputError(f"t must be (B, Dt) with B = {batch} like v, got {tuple(t.shape)}")
    if tuple(weight.shape) != (dim, t.shape[1]):
        raise InputError(f"weight must be (Dv, Dt) = ({dim}, {t.shape[1]}), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise InputError(f"bias must be (Dv,) = ({dim},), got {tuple(bias.shape)}")
    if logit_scale.numel() != 1:
        raise InputError(f"logit_scale must hold one value, got shape {tuple(logit_scale.shape)}")
    if class_positives:
        if labels is None:
            raise InputError("labels are required when positives='class'")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InputError(f"labels must be an integer tensor, got {_describe(labels)}")
        if tuple(labels.shape) != (batch,):
            raise InputError(f"labels must be (B,) = ({batch},), got {tuple(labels.shape)}")
        named["labels"] = labels
    for name, x in named.items():
        if x.device != v.device:
            raise InputError(f"{name} is on {x.device} but v is on {v.device}: put every input on one device")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when every input is float64 or promotes to it, else float32 (fp16/bf16 are computed in fp32)."""
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in tensors))
    return torch.float64 if dtype == torch.float64 else torch.float32


def vlmkd_contrastive_loss(
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    labels: torch.Tensor | None = None,
    positives: str = "instance",
    backend: str | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between normalised image features v (B, Dv) and normalised t @ weight.T + bias.

    `logit_scale` is the log of the similarity scale (CLIP's; clamped at log 100). `positives="class"`
    counts every pair with equal `labels` as a positive. Gradients flow to v, weight, bias and logit_scale;
    t is frozen data (the fused backends refuse a t that requires grad). `backend` ("reference", "cpp",
    "triton", "cuda") overrides $VLMKD_BACKEND and the choice by device. fp16/bf16 inputs are computed in fp32; the
    loss comes back in the compute dtype (float64 only when the inputs are float64).
    """
    if positives not in POSITIVES:
        raise InputError(f"positives must be {' or '.join(map(repr, POSITIVES))}, got {positives!r}")
    class_positives = positives == "class"
    if not isinstance(logit_scale, torch.Tensor):
        logit_scale = torch.tensor(float(logit_scale), device=v.device)
    _check_inputs(v, t, weight, bias, logit_scale, labels, class_positives)
    name = resolve_backend(v.device.type, backend)
    if name != REFERENCE and t.requires_grad:
        raise InputError(f"t requires grad, but backend {name!r} treats it as frozen data: pass t.detach()")

    dtype = _compute_dtype(v, t, weight, logit_scale, *(() if bias is None else (bias,)))
    v, t, weight = (x.to(dtype).contiguous() for x in (v, t, weight))
    bias = weight.new_zeros(weight.shape[0]) if bias is None else bias.to(dtype).contiguous()
    logit_scale = logit_scale.to(dtype).reshape(())
    if name == REFERENCE:
        with torch.autocast(v.device.type, enabled=False):
            return contrastive_ref(v, t, weight, bias, logit_scale, labels, positives)
    labels = labels.to(torch.int64).contiguous() if class_positives else torch.arange(v.shape[0], device=v.device)
    return _FusedContrastive.apply(v, t, weight, bias, logit_scale, labels, class_positives, name)
