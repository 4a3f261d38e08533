"""Caption features for a training batch: one sampled prompt per image per step, or the mean over prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from vlmkd.encode.conditioning import TextConditioning
from vlmkd.encode.store import FeatureStore
from vlmkd.errors import InputError

Mix = Literal["sample", "mean"]
MIXES: tuple[str, ...] = ("sample", "mean")


class CaptionFeatures:
    """Looks up the text features of dataset indices in a feature store.

    `mix="sample"` draws one prompt per image on every call (a fresh view of the image each step);
    `mix="mean"` averages the prompts (not renormalised: the VLM-KD loss normalises after its adaptor).
    `prompts` restricts both to a subset of the store's prompts, e.g. for the prompt-count ablation.
    `conditioning` (from `vlmkd.encode.conditioning.text_conditioning`) is applied to each picked feature.
    """

    def __init__(
        self,
        store: FeatureStore,
        mix: Mix = "sample",
        prompts: Sequence[str] | None = None,
        conditioning: TextConditioning | None = None,
    ):
        if mix not in MIXES:
            raise InputError(f"caption mix must be one of {', '.join(MIXES)}, got {mix!r}")
        available = store.prompt_ids
        chosen = tuple(available if prompts is None else prompts)
        unknown = [prompt for prompt in chosen if prompt not in available]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            problem = f"unknown {unknown}" if unknown else ("none given" if not chosen else "repeated ids")
            raise InputError(f"{store.path}: bad prompt subset {list(chosen)} ({problem}); the store has {available}")
        self.store = store
        self.mix: Mix = mix
        self.prompts = chosen
        self._columns = np.array([available.index(prompt) for prompt in chosen], dtype=np.int64)
        self.conditioning = conditioning

    @property
    def dim(self) -> int:
        return self.store.dim

    def __call__(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Features (len(indices), dim) float32 for dataset `indices`, on the device of `indices`."""
        rows = indices.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.store.num_images):
            bad = rows[(rows < 0) | (rows >= self.store.num_images)][0]
            raise IndexError(f"dataset index {bad} is outside the feature store's {self.store.num_images} images")
        features = self.store.features
        if self.mix == "mean":
            picked = features[rows][:, self._columns].astype(np.float32)
            if self.conditioning is not None:
                columns = np.broadcast_to(self._columns, picked.shape[:2]).reshape(-1)
                picked = self.conditioning.apply(picked.reshape(-1, self.dim), columns).reshape(picked.shape)
            picked = picked.mean(axis=1)
        else:
            device = generator.device if generator is not None else "cpu"
            draw = torch.randint(len(self._columns), (rows.size,), generator=generator, device=device).cpu().numpy()
            picked = features[rows, self._columns[draw]].astype(np.float32)
            if self.conditioning is not None:
                picked = self.conditioning.apply(picked, self._columns[draw])
        picked = np.ascontiguousarray(picked, dtype=np.float32)
        return torch.from_numpy(picked).to(indices.device)
