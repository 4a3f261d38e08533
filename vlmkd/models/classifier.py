"""A classifier split into a feature trunk and a linear head, so losses and evaluation can see the features."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """`features(x)` -> (B, D) image features; `head` maps them to (B, C) logits.

    `forward(x)` returns logits (a plain deployable classifier); `forward(x, return_features=True)` returns
    `(logits, features)` in one call, which is what a DistributedDataParallel wrapper needs to see.
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits
