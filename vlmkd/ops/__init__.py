"""Operators of vlmkd: the fused VLM-KD contrastive loss, its module, and its plain-PyTorch reference."""

from vlmkd.ops.contrastive import VlmkdContrastiveLoss, vlmkd_contrastive_loss
from vlmkd.ops.contrastive_reference import contrastive_ref

__all__ = ["VlmkdContrastiveLoss", "contrastive_ref", "vlmkd_contrastive_loss"]
