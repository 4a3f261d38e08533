"""Cut a balanced dataset to an exponential long-tail profile and write it to disk for every stage to read."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from vlmkd.atomic_files import write_text_atomic
from vlmkd.data.dataset import CLASSNAMES_FILE, ImageList, load_image_list
from vlmkd.data.listfile import write_classnames, write_list_file
from vlmkd.errors import InputError
from vlmkd.folder_kind import LONGTAIL_RECORD, refuse_unless

FileMode = Literal["link", "copy"]
RECORD_FILE = LONGTAIL_RECORD  # what the cut was made from; marks the folder as a cut this command may rewrite


def longtail_counts(max_count: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Images per class: n_k = floor(max_count * imbalance_factor ** (-k / (num_classes - 1))), at least 1.

    Class 0 keeps `max_count`, the last class `max_count / imbalance_factor` (the profile of CIFAR-LT and
    ImageNet-LT style cuts). A class never drops to zero images. A few ulps guard the floor against float
    error (500 / 100 is 5, not 4) without ever adding a whole image, however large `max_count`.
    """
    if max_count < 1:
        raise InputError(f"max_count must be >= 1, got {max_count}")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if not imbalance_factor >= 1:
        raise InputError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [max_count]
    counts = []
    for k in range(num_classes):
        exact = max_count * imbalance_factor ** (-k / (num_classes - 1))
        counts.append(max(1, math.floor(exact + 4 * math.ulp(exact))))
    return counts


def longtail_indices(
    labels: np.ndarray, counts: Sequence[int], seed: int = 0, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Dataset indices of a long-tail cut: `counts[k]` images drawn at random from class k, in dataset order.

    Indices in `exclude` (for example a held-out test split) are never drawn.
    """
    labels = np.asarray(labels)
    available = np.ones(labels.size, dtype=bool)
    if exclude is not None:
        available[np.asarray(exclude, dtype=np.int64)] = False
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in enumerate(counts):
        pool = np.flatnonzero((labels == label) & available)
        if pool.size < count:
            raise InputError(f"class {label} has {pool.size} images, the long-tail profile needs {count}")
        chosen.append(rng.choice(pool, size=count, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def make_longtail(
    dataset: ImageList,
    out_dir: Path,
    imbalance_factor: float,
    seed: int = 0,
    *,
    max_count: int | None = None,
    list_name: str = "train.txt",
    files: FileMode = "link",
) -> ImageList:
    """Write a long-tail cut of `dataset` to `out_dir` (images, list file, class names) and load it back.

    Class k keeps `longtail_counts(max_count, C, imbalance_factor)[k]` images chosen with `seed`;
    `max_count` defaults to the smallest class of `dataset`. Images keep their relative paths and are
    hard-linked (`files="link"`, copied where links are impossible) or copied, so the cut is a
    self-contained directory that every stage and DALI's file reader see identically.
    """
    out_dir = Path(out_dir)
    if (out_dir / list_name).resolve() == dataset.source.resolve():
        raise InputError(f"{out_dir / list_name}: would overwrite the source list file; choose another out_dir")
    # Only an earlier cut (its longtail.json) is written over: never a dataset's own folder or other files.
    refuse_unless(out_dir, set(), stage="long-tail cut", flag="OUT", own=lambda dir: (dir / RECORD_FILE).is_file())
    source_counts = dataset.class_counts()
    if max_count is None:
        max_count = int(source_counts.min())
    counts = longtail_counts(max_count, dataset.num_classes, imbalance_factor)
    indices = longtail_indices(dataset.labels(), counts, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in indices:
        place_file(dataset.path(int(index)), out_dir / dataset.samples[index].path, files)
    entries = [(dataset.samples[i].path, dataset.samples[i].label) for i in indices]
    write_list_file(out_dir / list_name, entries)
    write_classnames(out_dir / CLASSNAMES_FILE, dataset.classnames)
    record = {"source": str(dataset.source), "source_fingerprint": dataset.fingerprint(), "list": list_name,
              "imbalance_factor": float(imbalance_factor), "max_count": int(max_count), "seed": int(seed)}  # fmt: skip
    write_text_atomic(out_dir / RECORD_FILE, json.dumps(record, indent=1) + "\n", durable=False)
    return load_image_list(out_dir / list_name)


def place_file(source: Path, target: Path, mode: FileMode) -> None:
    """Put `source` at `target` (hard link or copy), replacing another file already there."""
    if mode not in ("link", "copy"):
        raise InputError(f"files must be 'link' or 'copy', got {mode!r}")
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    if target.exists():
        if target.samefile(source):
            return
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copyfile(source, target)
