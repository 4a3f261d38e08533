"""Text supervision for training: the caption feature store and the contrastive loss module around it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from vlmkd.data import ImageList
from vlmkd.train.config import TrainConfig

if TYPE_CHECKING:
    from vlmkd.encode.store import FeatureStore


class TextSource(Protocol):
    """Text features (B, D) for a batch of dataset indices; `generator` drives the per-step prompt draw."""

    @property
    def dim(self) -> int: ...

    def __call__(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


def open_text_source(config: TrainConfig, dataset: ImageList, store: FeatureStore) -> TextSource:
    """Text features of the open feature `store`, checked against the training set, mixed as configured."""
    from vlmkd.encode.loader import CaptionFeatures

    store.check_dataset(dataset)
    return CaptionFeatures(store, mix=config.caption_mix, prompts=config.prompts)


def build_contrastive(config: TrainConfig, text_dim: int, image_dim: int) -> nn.Module:
    """The VLM-KD loss module: adaptor text_dim -> image_dim and the (fixed or learnable) temperature."""
    from vlmkd.ops import VlmkdContrastiveLoss

    return VlmkdContrastiveLoss(
        text_dim,
        image_dim,
        positives=config.positives,
        init_temperature=config.temperature,
        learn_temperature=config.learn_temperature,
        hidden_dim=config.adaptor_hidden,
        backend=config.contrastive_backend,
    )
