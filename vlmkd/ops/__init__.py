"""Operators of vlmkd: the fused VLM-KD contrastive loss and its plain-PyTorch reference (its module,
`VlmkdContrastiveLoss`, is in `vlmkd.losses`)."""

from vlmkd.ops.contrastive import vlmkd_contrastive_loss
from vlmkd.ops.contrastive_reference import contrastive_ref

__all__ = ["contrastive_ref", "vlmkd_contrastive_loss"]
