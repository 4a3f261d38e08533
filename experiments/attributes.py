"""Per-image attributes the labels do not carry, measured from a digit's pixels, and captions that state them.

The positive control's text: each training digit's slant and stroke thickness, binned into terciles *within
its class* (so the label says nothing about them), worded with a few paraphrase templates so that two
images' captions share most of their words (the hard, realistic case for a sentence encoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmkd.data import ImageList

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "slant": ("tilted to the left", "upright", "tilted to the right"),
    "thickness": ("thin", "medium", "thick"),
}
TEMPLATES = (
    "a photo of a single white handwritten digit centred on a plain black background; "
    "the pen strokes are {thickness} and the digit is {slant}",
    "a grayscale scan of one handwritten digit in white ink on black paper, "
    "the strokes {thickness}, the digit {slant}, nothing else in the picture",
    "a close-up of one handwritten digit, white on a black background, written with {thickness} strokes "
    "and {slant}, with no other marks",
    "a small square image showing one white handwritten digit on black; it is {slant} "
    "and drawn with {thickness} pen strokes",
)


# The same captions naming the digit too, as a real VLM's would: the class words then agree with the labels,
# and the attributes are what two captions of one class still differ in.
CLASS_TEMPLATES = tuple(t.replace("handwritten digit", "handwritten {digit}", 1) for t in TEMPLATES)


def load_pixels(dataset: ImageList) -> np.ndarray:
    """(N, H, W) float32 in [0, 1]: every image of `dataset` as grayscale."""
    return np.stack(
        [np.asarray(Image.open(dataset.path(i)).convert("L"), dtype=np.float32) / 255.0 for i in range(len(dataset))]
    )


def slant(pixels: np.ndarray) -> np.ndarray:
    """Shear of each digit from its second moments: > 0 when the top leans right (N,)."""
    n, height, width = pixels.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    mass = pixels.reshape(n, -1).sum(axis=1) + 1e-9
    flat = pixels.reshape(n, -1).astype(np.float64)
    r_mean = flat @ rows.ravel() / mass
    c_mean = flat @ cols.ravel() / mass
    dr = rows.ravel()[None, :] - r_mean[:, None]
    dc = cols.ravel()[None, :] - c_mean[:, None]
    mu11 = (flat * dr * dc).sum(axis=1) / mass
    mu02 = (flat * dr * dr).sum(axis=1) / mass
    return -(mu11 / np.maximum(mu02, 1e-9))  # rows grow downwards: a right lean makes column fall with row


def thickness(pixels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean stroke width in pixels: 2 x ink area / ink boundary length (N,)."""
    ink = pixels > threshold
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    boundary = (ink & ~interior).reshape(len(ink), -1).sum(axis=1)
    return 2.0 * ink.reshape(len(ink), -1).sum(axis=1) / np.maximum(boundary, 1)


def tercile_within_class(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0/1/2 per image: the tercile of its value among the images of its own class (ranks, ties by index)."""
    levels = np.zeros(len(values), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranks = np.argsort(np.argsort(values[members], kind="stable"), kind="stable")
        levels[members] = np.minimum(3 * ranks // len(members), 2)
    return levels


def attribute_levels(dataset: ImageList) -> dict[str, np.ndarray]:
    """Per-image level (index into ATTRIBUTES[name]) of every attribute, binned within each class."""
    pixels = load_pixels(dataset)
    labels = dataset.labels()
    return {
        "slant": tercile_within_class(slant(pixels), labels),
        "thickness": tercile_within_class(thickness(pixels), labels),
    }


def caption(levels: dict[str, int], template: str, digit: str = "digit") -> str:
    """One caption: `template` with each attribute's words for its level (and `digit` for `{digit}`)."""
    return template.format(digit=digit, **{name: ATTRIBUTES[name][level] for name, level in levels.items()})


def attribute_captions(
    levels: dict[str, np.ndarray], templates: Sequence[str] = TEMPLATES, digits: Sequence[str] | None = None
) -> list[list[str]]:
    """captions[i][p]: image i's attributes worded with template p (naming `digits[i]` where it asks)."""
    count = len(next(iter(levels.values())))
    names = digits if digits is not None else ["digit"] * count
    return [
        [caption({name: int(v[i]) for name, v in levels.items()}, t, names[i]) for t in templates] for i in range(count)
    ]
