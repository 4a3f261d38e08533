"""Classification losses for long-tailed data: cross-entropy, Balanced Softmax and logit-adjusted CE.

Each task loss is a softmax cross-entropy over logits shifted by a per-class offset computed from the
training counts, registered by name in `TASK_LOSSES` (`--task-loss` reads it). Balanced Softmax (Ren et al.
2020) adds log n_j (training count of class j) to each logit; the logit-adjusted loss (Menon et al. 2021)
adds tau * log pi_j (class prior). With tau = 1 the two differ by a constant shift of all logits and give the
same loss; both are kept under their own names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.registry import Registry

# (training images per class clamped at 1, or None when unknown; tau) -> logit offset (C,), or None for plain CE.
LogitOffset = Callable[[torch.Tensor | None, float], torch.Tensor | None]


def _no_offset(counts: torch.Tensor | None, tau: float) -> None:
    return None


def _balanced_softmax(counts: torch.Tensor | None, tau: float) -> torch.Tensor:
    return _required(counts, "balanced_softmax").log()


def _logit_adjust(counts: torch.Tensor | None, tau: float) -> torch.Tensor:
    counts = _required(counts, "logit_adjust")
    return tau * (counts / counts.sum()).log()


def _required(counts: torch.Tensor | None, kind: str) -> torch.Tensor:
    if counts is None:
        raise ValueError(f"task loss {kind!r} needs the training class counts")
    return counts


TASK_LOSSES: Registry[LogitOffset] = Registry("task_loss")
TASK_LOSSES.register("ce", _no_offset, "cross-entropy")
TASK_LOSSES.register("balanced_softmax", _balanced_softmax, "Balanced Softmax: logits + log n_j")
TASK_LOSSES.register("logit_adjust", _logit_adjust, "logit-adjusted CE: logits + tau * log prior_j (--la-tau)")


class TaskLoss(nn.Module):
    """`kind` in TASK_LOSSES; `class_counts` (C,) training images per class (needed by the long-tail losses)."""

    def __init__(self, kind: str, class_counts: torch.Tensor | None = None, tau: float = 1.0) -> None:
        super().__init__()
        make_offset = TASK_LOSSES.get(kind)
        self.kind = kind
        counts = None if class_counts is None else torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
        offset = make_offset(counts, tau)
        self.register_buffer("offset", torch.zeros(0) if offset is None else offset, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.offset.numel():
            logits = logits + self.offset
        return F.cross_entropy(logits, labels)
