"""The training objective: task loss + lambda * VLM-KD contrastive loss + kd_weight * logit KD, by parts."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vlmkd.losses.kd import logit_kd
from vlmkd.losses.task import TaskLoss

Gather = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _no_gather(
    features: torch.Tensor, text: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return features, text, labels


def contrast_chance(
    labels: torch.Tensor, positives: str, negatives: str = "batch", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The VLM-KD loss of a contrast that tells nothing apart (all similarities equal) for this batch.

    log B for instance positives (also with soft targets); for class positives the mean over anchors of
    log(B / same-label count); with negatives only within each class, the mean over anchors in classes of
    n >= 2 images of log n (0 when there is none). Means are weighted by the anchors' class-balance `weights`
    where given. In float64, so that a logged fraction of chance is exact.
    """
    batch = labels.shape[0]
    same = (labels[:, None] == labels[None, :]).sum(dim=1).double()
    a = torch.ones_like(same) if weights is None else weights.to(same.device, torch.float64)
    if negatives == "class":
        counted = same >= 2
        return (a[counted] * same[counted].log()).sum() / a[counted].sum() if counted.any() else same.new_zeros(())
    if positives != "class":
        return torch.tensor(math.log(batch), dtype=torch.float64, device=labels.device)
    return (a * (math.log(batch) - same.log())).sum() / a.sum()


class VlmkdObjective(nn.Module):
    """Returns `{"loss", "task_loss", "vlmkd_loss", "kd_loss", "vlmkd_chance"}`; disabled terms are exact zeros.

    `vlmkd_chance` is the VLM-KD loss at chance for the (global) batch (`contrast_chance`): a text term
    that learns ends clearly below it.

    `contrastive(v, t, labels)` is the VLM-KD loss module (it owns the text adaptor and the temperature, so
    its parameters train with the model and are dropped from the deployable classifier). `gather` collects
    image features (with gradient), text features and labels from every process, so in-batch negatives span
    the global batch under DDP.
    """

    def __init__(
        self,
        task: TaskLoss,
        contrastive: nn.Module | None = None,
        vlmkd_weight: float = 0.0,
        kd_weight: float = 0.0,
        kd_temperature: float = 4.0,
        gather: Gather = _no_gather,
    ) -> None:
        super().__init__()
        if vlmkd_weight > 0 and contrastive is None:
            raise ValueError("vlmkd_weight > 0 needs a contrastive loss module")
        self.task = task
        self.contrastive = contrastive if vlmkd_weight > 0 else None
        self.vlmkd_weight = vlmkd_weight
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.gather = gather

    def forward(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        labels: torch.Tensor,
        text: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        zero = logits.new_zeros((), dtype=torch.float32)
        task_loss = self.task(logits, labels)
        vlmkd_loss = kd_loss = zero
        chance = logits.new_zeros((), dtype=torch.float64)
        if self.contrastive is not None:
            if text is None:
                raise ValueError("the VLM-KD term needs text features for the batch")
            v, t, y = self.gather(features.float(), text.float(), labels)
            vlmkd_loss = self.contrastive(v, t, y)
            kept = getattr(self.contrastive, "contrast_mask", lambda labels: None)(y)
            if kept is not None:  # the images left out of the contrast do not count in its chance level
                y = y[kept]
            weights = getattr(self.contrastive, "anchor_weights", lambda labels: None)(y)
            chance = (
                contrast_chance(
                    y,
                    getattr(self.contrastive, "positives", "instance"),
                    getattr(self.contrastive, "negatives", "batch"),
                    weights,
                )
                if y.numel() >= 2
                else chance
            )
        if self.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("kd_weight > 0 needs teacher logits")
            kd_loss = logit_kd(logits, teacher_logits, self.kd_temperature)
        loss = task_loss + self.vlmkd_weight * vlmkd_loss + self.kd_weight * kd_loss
        parts = {"loss": loss, "task_loss": task_loss, "vlmkd_loss": vlmkd_loss, "kd_loss": kd_loss}
        return parts | {"vlmkd_chance": chance}
