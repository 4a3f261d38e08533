"""The contract between the dispatcher and a fused backend of the contrastive loss: two PyTorch ops per backend.

- `vlmkd::contrastive_forward_<name>(v, t, weight, bias, logit_scale, labels, class_positives) -> Tensor[]`: the
  loss (0-d, for an upstream gradient of 1) followed by whatever the backward needs (`saved`);
- `vlmkd::contrastive_backward_<name>(grad_loss, v, t, weight, bias, logit_scale, labels, class_positives, saved)
  -> [grad_v, grad_weight, grad_bias, grad_logit_scale]`.

Inputs arrive checked, contiguous and in one dtype (float32 or float64); `labels` are int64 (the row index for
instance positives). `register_backend_ops` declares both ops of a backend from two plain functions with those
signatures, with their fake (shape-only) versions, so `torch.compile` traces through them; `backend_ops` finds
them for the autograd Function of `vlmkd.ops.contrastive`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

ForwardFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, bool], list[Tensor]]
BackwardFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, bool, list[Tensor]], list[Tensor]]


def backend_ops(name: str) -> tuple[torch._ops.OpOverload, torch._ops.OpOverload]:
    """The forward and backward ops of backend `name` (registered by importing its module)."""
    namespace = torch.ops.vlmkd
    return (
        getattr(namespace, f"contrastive_forward_{name}").default,
        getattr(namespace, f"contrastive_backward_{name}").default,
    )


def fake_backward(grad_loss, v, t, weight, bias, logit_scale, labels, class_positives, saved):
    """Shapes of every backend's gradients: those of v, weight, bias and logit_scale."""
    return [torch.empty_like(v), torch.empty_like(weight), torch.empty_like(bias), torch.empty_like(logit_scale)]


def register_backend_ops(
    name: str,
    forward: ForwardFn,
    backward: BackwardFn,
    fake_forward: ForwardFn,
    *,
    device_type: str | None = None,
    triton: bool = False,
    device_guard: Callable[[torch.device], AbstractContextManager] | None = None,
) -> None:
    """Declare backend `name`'s two ops running `forward` and `backward` (`fake_forward` gives the shapes of
    `forward`'s outputs). Triton backends are declared with `torch.library.triton_op` (so `torch.compile` sees
    their kernels), others as custom ops for `device_type` tensors; `device_guard(v.device)`, when given, is
    entered around every call (e.g. `torch.cuda.device`, for kernels launched on the current device)."""
    guard = device_guard or (lambda device: nullcontext())

    def contrastive_forward(
        v: Tensor,
        t: Tensor,
        weight: Tensor,
        bias: Tensor,
        logit_scale: Tensor,
        labels: Tensor,
        class_positives: bool,
    ) -> list[Tensor]:
        with guard(v.device):
            return forward(v, t, weight, bias, logit_scale, labels, class_positives)

    def contrastive_backward(
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
        with guard(v.device):
            return backward(grad_loss, v, t, weight, bias, logit_scale, labels, class_positives, saved)

    for op_name, function, fake in (
        (f"vlmkd::contrastive_forward_{name}", contrastive_forward, fake_forward),
        (f"vlmkd::contrastive_backward_{name}", contrastive_backward, fake_backward),
    ):
        if triton:
            op = torch.library.triton_op(op_name, function, mutates_args=())
        else:
            op = torch.library.custom_op(op_name, function, mutates_args=(), device_types=device_type)
        op.register_fake(fake)
