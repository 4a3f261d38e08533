"""Image transforms on PIL images, the torch loader's half of the numerics both loaders share.

Train: random-resized-crop (area fraction `scale`, aspect ratio `ratio`, torchvision's sampling rule)
resized to image_size, optional horizontal flip. Eval: the central square of side min(H, W) resized to
image_size, which is "resize the shorter side, then centre-crop" without rounding the intermediate
size. Resizing is bilinear with antialiasing when shrinking, as DALI's `fn.resize` does by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


@dataclass(frozen=True)
class TransformSpec:
    """Everything that decides the pixels a loader yields."""

    train: bool
    image_size: int
    flip: bool = True
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def center_square_box(width: int, height: int) -> Box:
    """The central square of side min(width, height)."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """A crop of random area fraction in `scale` and log-uniform aspect ratio in `ratio` (10 tries, else centre)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height  # fallback: the largest centred crop inside the ratio range
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def apply_transform(image: Image.Image, spec: TransformSpec, rng: np.random.Generator | None) -> np.ndarray:
    """RGB PIL image -> uint8 array (3, S, S); `rng` drives the train augmentation."""
    size = (spec.image_size, spec.image_size)
    if spec.train:
        if rng is None:
            raise ValueError("the train transform needs a random generator")
        box = random_resized_crop_box(image.width, image.height, spec.scale, spec.ratio, rng)
        image = image.resize(size, Image.Resampling.BILINEAR, box=box)
        if spec.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        image = image.resize(size, Image.Resampling.BILINEAR, box=center_square_box(image.width, image.height))
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
