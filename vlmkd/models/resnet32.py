"""CIFAR-style ResNet-32 (He et al. 2016, Sec. 4.2): 3 stages x 5 basic blocks, widths 16/32/64 x `width`
(a fraction such as 0.5 gives a narrower, faster net).

Written for this project; the long-tail literature (LDAM, Balanced Softmax, ...) trains it from scratch on
CIFAR-LT. Shortcuts that change shape are 1x1 convolutions (option B); `norm="group"` swaps BatchNorm for
GroupNorm so that results do not depend on the per-process batch (SyncBatchNorm needs a GPU).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet32Features(nn.Module):
    """The ResNet-32 trunk: image (B, 3, H, W) -> globally pooled features (B, 64 * width)."""

    def __init__(self, width: float = 1.0, blocks_per_stage: int = 5, norm: str = "batch") -> None:
        super().__init__()
        channels = [max(4, round(base * width)) for base in (16, 32, 64)]
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, padding=1, bias=False), _norm(norm, channels[0]))
        layers: list[nn.Module] = []
        in_channels = channels[0]
        for stage, out_channels in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride, norm))
                in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.out_features = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.layers(x).mean(dim=(2, 3))
