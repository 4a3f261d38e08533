"""Speed settings of a classifier that leave its results (up to float rounding) and its checkpoints unchanged.

- channels-last: weights and input batches in NHWC memory order, which the convolution kernels of
  oneDNN (CPU) and cuDNN (GPU, tensor cores) prefer. Saved weights are made contiguous again, so a
  checkpoint does not depend on it.
- compile: `torch.compile` of the backbone (the trunk; the linear head and the losses stay eager),
  compiled in place (`nn.Module.compile`), so parameter names and state dicts are unchanged. The first
  steps pay the compilation.
"""

from __future__ import annotations

import torch

from vlmkd.models.classifier import Classifier

COMPILE_BACKEND = "inductor"  # torch.compile's default; read at call time


def apply_speed_settings(model: Classifier, *, channels_last: bool = False, compile: bool = False) -> Classifier:
    """Put `model` in channels-last memory order and/or compile its backbone, in place; returns it."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.features.compile(backend=COMPILE_BACKEND)
    return model


def batch_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`images` (B, C, H, W) in the memory order the model was prepared for."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
