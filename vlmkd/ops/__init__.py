"""Operators of vlmkd: the VLM-KD contrastive loss and its reference."""

from vlmkd.ops.reference import contrastive_ref

__all__ = ["contrastive_ref"]
