"""Text supervision for training: the caption feature store and the contrastive loss module around it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from vlmkd.data import ImageList
from vlmkd.train.config import TrainConfig

if TYPE_CHECKING:
    from vlmkd.encode.conditioning import TextConditioning
    from vlmkd.encode.store import FeatureStore


class TextSource(Protocol):
    """Text features (B, D) for a batch of dataset indices; `generator` drives the per-step prompt draw."""

    @property
    def dim(self) -> int: ...

    def __call__(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


def open_text_source(config: TrainConfig, dataset: ImageList, store: FeatureStore) -> TextSource:
    """Text features of the open feature `store`, checked against the training set, conditioned and mixed as
    configured (the conditioning is computed once, here, from the whole store)."""
    from vlmkd.encode.conditioning import text_conditioning
    from vlmkd.encode.loader import CaptionFeatures

    store.check_dataset(dataset)
    prompts = tuple(store.prompt_ids if config.prompts is None else config.prompts)
    columns = [store.prompt_ids.index(p) for p in prompts if p in store.prompt_ids]
    conditioning = None
    if config.text_center != "none" or config.text_whiten:
        conditioning = text_conditioning(store.features, config.text_center, config.text_whiten, columns or None)
    return CaptionFeatures(store, mix=config.caption_mix, prompts=config.prompts, conditioning=conditioning)


def build_contrastive(
    config: TrainConfig, text_dim: int, image_dim: int, class_counts: list[int] | None = None
) -> nn.Module:
    """The VLM-KD loss module of `config`: adaptor text_dim -> image_dim, temperature, image side and targets
    (`class_counts`, training images per class, weight the anchors when the contrast is class-balanced and pick
    the classes that enter it with `contrast_min_count`)."""
    from vlmkd.losses import VlmkdContrastiveLoss
    from vlmkd.losses.contrastive_settings import ContrastiveSettings

    settings = ContrastiveSettings(**{name: getattr(config, name) for name in ContrastiveSettings.__dataclass_fields__})
    counts = class_counts if config.contrast_balance != "none" or config.contrast_min_count > 0 else None
    return VlmkdContrastiveLoss(
        text_dim, image_dim, **settings.kwargs(), class_counts=counts, backend=config.contrastive_backend
    )


def conditioning_tensors(conditioning: TextConditioning) -> dict[str, torch.Tensor]:
    """The conditioning's arrays as CPU tensors, the form checkpoints and `--save-features` store."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in conditioning.arrays().items()}


def conditioning_from_tensors(tensors: dict[str, torch.Tensor], summary: dict) -> TextConditioning:
    """Inverse of `conditioning_tensors`, given the conditioning's `summary()`."""
    from vlmkd.encode.conditioning import TextConditioning

    return TextConditioning.from_arrays({k: v.numpy() for k, v in tensors.items()}, summary)


def saved_conditioning(train_state: dict, info: dict) -> TextConditioning | None:
    """The text conditioning a training checkpoint stored (None: trained without it, or saved before it was)."""
    tensors = train_state.get("text_conditioning")
    if not tensors or "text_conditioning" not in info:
        return None
    return conditioning_from_tensors(tensors, info["text_conditioning"])
