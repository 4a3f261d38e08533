"""`contrastive_ref`: the VLM-KD contrastive loss in plain PyTorch, the ground truth for every backend."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # the similarity scale is clamped at 100 (CLIP's bound)
POSITIVES = ("instance", "class")  # each image's own caption, or every caption of its class


def contrastive_ref(
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    positives: str = "instance",
) -> torch.Tensor:
    """Symmetric InfoNCE between normalised image features and normalised adapted text features.

    u = t @ weight.T + bias; s_ij = exp(min(logit_scale, log 100)) * <v_i/|v_i|, u_j/|u_j|>.
    `positives="instance"`: pair i's positive is j = i. `positives="class"`: every j with labels[j] == labels[i]
    is a positive, and each anchor's loss is -log(sum over positives of exp s / sum over all of exp s).
    The loss is the mean of the row-wise (image -> text) and column-wise (text -> image) losses.
    Computes in the dtype of `v` (use float64 for a reference of references).
    """
    u = F.linear(t.to(v.dtype), weight.to(v.dtype), None if bias is None else bias.to(v.dtype))
    scale = logit_scale.to(v.dtype).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * F.normalize(v, dim=1) @ F.normalize(u, dim=1).T
    if positives == "instance":
        target = torch.arange(v.shape[0], device=v.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if positives == "class":
        if labels is None:
            raise ValueError("labels are required when positives='class'")
        positive = labels[:, None] == labels[None, :]
        return 0.5 * (_multi_positive_nce(logits, positive) + _multi_positive_nce(logits.T, positive.T))
    raise ValueError(f"positives must be {' or '.join(map(repr, POSITIVES))}, got {positives!r}")


def _multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum_pos exp(logits) / sum_all exp(logits))."""
    masked = logits.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()
