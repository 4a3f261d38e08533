"""Optimizer construction and the learning-rate schedule (linear warmup, then cosine to zero)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate for optimizer step `step` (0-based): a pure function of the step, so resuming needs no state."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


DECAYS = ("none", "linear", "cosine")  # how the VLM-KD weight falls after its warm-up


def vlmkd_weight_at(
    step: int, total_steps: int, weight: float, *, warmup_steps: int = 0, off_steps: int = 0, decay: str = "none"
) -> float:
    """The VLM-KD weight at optimizer step `step` (0-based), a pure function of the step like `lr_at`.

    A linear ramp from 0 over the first `warmup_steps`, then `weight`, decaying (`linear` or `cosine`) to 0 at the
    start of the last `off_steps`, during which it is 0 (the classifier then trains on its task loss alone).
    """
    active_end = total_steps - off_steps
    if step >= active_end:
        return 0.0
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay == "none" or step < warmup_steps:
        return weight * ramp
    progress = (step - warmup_steps) / max(1, active_end - warmup_steps)
    if decay == "linear":
        return weight * (1.0 - progress)
    if decay == "cosine":
        return weight * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")


def build_optimizer(
    modules: Iterable[nn.Module],
    kind: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    own_lr: Sequence[tuple[Iterable[nn.Parameter], float]] = (),
) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, with momentum) or AdamW; biases, norm parameters and scalars get no weight decay.

    `own_lr` lists parameters that train at their own base learning rate (the VLM-KD temperature and
    adaptor); every group records its `base_lr`, which the schedule scales step by step.
    """
    rates: dict[int, float] = {}
    for params, rate in own_lr:
        rates |= {id(param): float(rate) for param in params}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                groups.setdefault((rates.get(id(param), float(lr)), param.ndim > 1), []).append(param)
    param_groups = [
        {"params": params, "base_lr": rate, "lr": rate, "weight_decay": weight_decay if decay else 0.0}
        for (rate, decay), params in groups.items()
    ]
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {kind!r}")
