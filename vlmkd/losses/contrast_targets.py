"""The VLM-KD contrast with soft targets and per-anchor weights, in plain PyTorch (any device).

Two ways to keep a contrastive text term from working against a long tail:
- soft targets: an image's target over the batch's captions is softmax(cos(c_i, c_j) / tau_q) of the caption
  features themselves, so near-identical captions of different images share the target instead of being
  pushed apart as negatives (tau_q -> 0 with distinct captions gives back one positive per image);
- class-balanced anchors: each image's (row) and caption's (column) loss is weighted by its class's training
  count to the power -1/2 or -1, normalised to mean 1 over the batch, so head classes do not decide alone
  where the adaptor puts every caption.
The fused backends (cpp, triton, cuda) compute only uniform anchors with one-hot or same-class targets; with
these options the term runs this plain-PyTorch math instead (B x B in memory), on whatever device the
features are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmkd.errors import InputError
from vlmkd.ops.contrastive_reference import MAX_LOGIT_SCALE

BALANCES = ("none", "sqrt", "inverse")  # anchor weights: 1, n_class ** -1/2 or n_class ** -1


def soft_target_matrix(text: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B) row-stochastic targets softmax_j(cos(text_i, text_j) / temperature); no gradient.

    A caption of all zeros (what centring leaves of one caption shared by every image) has cosine 0 with
    everything: its row is uniform, so a batch of such captions gives uniform targets and, with uniform
    similarities, an exactly zero gradient.
    """
    unit = F.normalize(text.detach(), dim=1)
    return torch.softmax(unit @ unit.T / temperature, dim=1)


def class_anchor_weights(labels: torch.Tensor, class_counts: torch.Tensor, balance: str) -> torch.Tensor | None:
    """(B,) weights count[label] ** -1/2 (`sqrt`) or ** -1 (`inverse`), normalised to mean 1; None for `none`."""
    if balance not in BALANCES:
        raise InputError(f"contrast_balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    if balance == "none":
        return None
    power = 0.5 if balance == "sqrt" else 1.0
    counts = class_counts.to(labels.device, torch.float64)[labels].clamp(min=1)
    weights = counts.pow(-power)
    return weights * (weights.numel() / weights.sum())


def weighted_contrast(
    v: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    logit_scale: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of `contrastive_ref` with soft `targets` (B, B, rows sum to 1; default one-hot) or a
    same-class `positive_mask` (multi-positive form), and per-anchor weights (B,; default 1) on rows and columns.

    Row i (image -> captions) costs lse_j s_ij - sum_j q_ij s_ij, column j (caption -> images)
    lse_i s_ij - sum_i q_ji s_ij; the loss is (sum_i a_i row_i + sum_j a_j col_j) / (2 sum a).
    """
    u = F.linear(t.to(v.dtype), weight.to(v.dtype), None if bias is None else bias.to(v.dtype))
    scale = logit_scale.to(v.dtype).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * F.normalize(v, dim=1) @ F.normalize(u, dim=1).T
    if positive_mask is not None:
        rows = logits.logsumexp(dim=1) - logits.masked_fill(~positive_mask, float("-inf")).logsumexp(dim=1)
        columns = logits.logsumexp(dim=0) - logits.masked_fill(~positive_mask.T, float("-inf")).logsumexp(dim=0)
    else:
        q = torch.eye(v.shape[0], dtype=v.dtype, device=v.device) if targets is None else targets.to(v.dtype)
        rows = logits.logsumexp(dim=1) - (q * logits).sum(dim=1)
        columns = logits.logsumexp(dim=0) - (q.T * logits).sum(dim=0)
    if anchor_weights is None:
        return 0.5 * (rows.mean() + columns.mean())
    a = anchor_weights.to(v.dtype)
    return 0.5 * ((a * rows).sum() + (a * columns).sum()) / a.sum()
