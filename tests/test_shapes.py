"""The study's label-relevant captions (experiments/shapes.py): shape attributes measured from drawn digits, and
captions that name the digit and state them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout's experiments/, never installed
from experiments.shapes import FEATURE_NAMES, shape_captions, shape_features, shape_phrases  # noqa: E402


def ring(image: np.ndarray, centre: tuple[float, float], radius: float, width: float = 1.6) -> np.ndarray:
    rows, cols = np.mgrid[0:28, 0:28]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    image[np.abs(distance - radius) <= width / 2 + 0.3] = 1.0
    return image


def features(image: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, shape_features(image).tolist(), strict=True))


def test_a_ring_is_one_large_loop_without_free_ends() -> None:
    got = features(ring(np.zeros((28, 28)), (14, 14), 8))
    assert got["loops"] == 1 and got["big_loop"] == 1 and got["loop_middle"] == 1 and got["ends"] == 0
    assert got["vertical"] == 0 and not any(got[f"open_{side}"] for side in ("left", "right", "top", "bottom"))


def test_two_stacked_rings_are_two_loops_one_above_the_other() -> None:
    image = ring(ring(np.zeros((28, 28)), (8.5, 14), 4.5), (19, 14), 5)
    got = features(image)
    assert got["loops"] == 2 and got["loop_top"] == 1 and got["loop_bottom"] == 1
    assert shape_phrases(shape_features(image))["loops"] == "two closed loops, one above the other"


def test_a_vertical_stroke_has_two_free_ends_and_is_narrow() -> None:
    image = np.zeros((28, 28))
    image[4:24, 13:15] = 1.0
    got = features(image)
    assert got["loops"] == 0 and got["vertical"] == 1 and got["narrow"] == 1
    assert got["ends"] == 2
    assert sum(got[f"end_top_{c}"] for c in ("left", "centre", "right")) == 1  # one end at the top...
    assert sum(got[f"end_bottom_{c}"] for c in ("left", "centre", "right")) == 1  # ... and one at the bottom


def test_a_seven_has_a_bar_at_the_top_opens_to_the_left_and_ends_top_left() -> None:
    image = np.zeros((28, 28))
    image[5:7, 7:21] = 1.0  # the bar of a seven
    image[5:24, 19:21] = 1.0  # its stem
    got = features(image)
    assert got["bar_top"] == 1 and got["open_left"] == 1 and got["loops"] == 0
    assert got["ends"] == 2 and got["end_top_left"] == 1


def test_captions_name_the_digit_in_four_paraphrases_that_share_the_attributes() -> None:
    image = ring(np.zeros((28, 28)), (14, 14), 8)
    (captions,) = shape_captions(np.stack([shape_features(image)]), ["eight"])
    assert len(captions) == 4 and len(set(captions)) == 4
    assert all("eight" in caption and "one large round loop" in caption for caption in captions)
    assert "an eight in handwriting" in captions[2]


@pytest.mark.parametrize("digit, article", [("eight", "an eight"), ("seven", "a seven")])
def test_the_article_follows_the_digit(digit: str, article: str) -> None:
    (captions,) = shape_captions(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32), [digit])
    assert f"{article} in handwriting" in captions[2]
