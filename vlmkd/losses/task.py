"""Classification losses for long-tailed data: cross-entropy, Balanced Softmax and logit-adjusted CE.

Balanced Softmax (Ren et al. 2020) adds log n_j (training count of class j) to each logit before the
softmax; the logit-adjusted loss (Menon et al. 2021) adds tau * log pi_j (class prior). With tau = 1 the two
differ by a constant shift of all logits and give the same loss; both are kept under their own names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TASK_LOSSES = ("ce", "balanced_softmax", "logit_adjust")


class TaskLoss(nn.Module):
    """`kind` in TASK_LOSSES; `class_counts` (C,) training images per class (needed by the long-tail losses)."""

    def __init__(self, kind: str, class_counts: torch.Tensor | None = None, tau: float = 1.0) -> None:
        super().__init__()
        if kind not in TASK_LOSSES:
            raise ValueError(f"task loss must be one of {TASK_LOSSES}, got {kind!r}")
        self.kind = kind
        offset = torch.zeros(0)
        if kind != "ce":
            if class_counts is None:
                raise ValueError(f"task loss {kind!r} needs the training class counts")
            counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
            offset = counts.log() if kind == "balanced_softmax" else tau * (counts / counts.sum()).log()
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind != "ce":
            logits = logits + self.offset
        return F.cross_entropy(logits, labels)
