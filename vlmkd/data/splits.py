"""Many / Medium / Few class splits from training counts, the long-tail evaluation convention."""

from __future__ import annotations

import numpy as np

from vlmkd.errors import InputError

SPLIT_NAMES = ("many", "medium", "few")


def class_splits(train_counts: np.ndarray, many_threshold: int = 100, few_threshold: int = 20) -> dict[str, np.ndarray]:
    """Class indices per split: many has count > many_threshold, few has count < few_threshold, medium the rest.

    The defaults are ImageNet-LT's (Many > 100, Few < 20 training images); small datasets pass their own.
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise InputError(f"train_counts must be a 1-D array of per-class counts, got shape {counts.shape}")
    if few_threshold > many_threshold + 1:
        raise InputError(f"few_threshold ({few_threshold}) must be at most many_threshold + 1 ({many_threshold + 1})")
    classes = np.arange(counts.size, dtype=np.int64)
    many = counts > many_threshold
    few = counts < few_threshold
    return {"many": classes[many], "medium": classes[~many & ~few], "few": classes[few]}
