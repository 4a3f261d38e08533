"""Builders the tests share: tiny training configs, caption and feature stores made for a test dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmkd.caption.store import CaptionStore
from vlmkd.caption.transfer import import_captions
from vlmkd.data import ImageList
from vlmkd.encode.store import FORMAT, VERSION, FeatureStore
from vlmkd.encode.writer import FeatureWriter
from vlmkd.train.config import TrainConfig, resolve_config

CLASS_TEMPLATES = (
    "a handwritten {label}",
    "a photo of the {label}",
    "an image of a {label}",
    "the {label}, written by hand",
)


def write_tiny_dataset(root: Path, size: int = 32) -> ImageList:
    """A 3-class dataset of 12 random RGB PNGs of `size` px (6/4/2 per class) with train.txt and classnames.txt."""
    from PIL import Image

    from vlmkd.data import load_image_list

    rng = np.random.default_rng(0)
    lines = []
    for label, count in enumerate((6, 4, 2)):
        (root / "images" / str(label)).mkdir(parents=True)
        for k in range(count):
            relative = f"images/{label}/{k}.png"
            Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / relative)
            lines.append(f"{relative} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("zero\none\ntwo\n")
    return load_image_list(root / "train.txt")


def write_flat_dataset(directory: Path, count: int, list_name: str = "train.txt", size: int = 8) -> Path:
    """`count` random RGB PNGs of `size` px directly in `directory` (image k has label k % 3), listed in
    `directory/list_name`; returns that list file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(directory / f"{k}.png")
        lines.append(f"{k}.png {k % 3}")
    (directory / list_name).write_text("\n".join(lines) + "\n")
    return directory / list_name


def class_captions(dataset: ImageList, out: Path) -> CaptionStore:
    """A one-prompt caption store whose caption of each image describes its class (templates by index),
    imported the public way (`vlmkd caption import`) from a JSONL file written beside `out`."""
    source = out.with_name(f"{out.name}.jsonl")
    lines = [
        json.dumps({"image_index": i, "caption": CLASS_TEMPLATES[i % len(CLASS_TEMPLATES)].format(label=name)})
        for i, name in enumerate(dataset.classnames[label] for label in dataset.labels().tolist())
    ]
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("\n".join(lines) + "\n")
    return import_captions(source, dataset, out, prompt_id="D", progress=False).store


# threads=1: OpenMP with 2 threads on a busy 2-core machine is ~20x slower than 1 thread for nets this small.
TINY = {
    "arch": "resnet32", "width": 0.25, "image_size": 8, "num_workers": 0, "progress": False, "log_every": 1,
    "threads": 1,
}  # fmt: skip


def make_features(dataset: ImageList, root: Path) -> Path:
    """A real feature store for `dataset`: class-description captions through all-MiniLM-L6-v2."""
    from vlmkd.encode.runner import encode_captions

    encode_captions(class_captions(dataset, root / "captions"), root / "features", progress=False)
    return root / "features"


def tiny_config(dataset: ImageList, output: Path, **overrides: object) -> TrainConfig:
    return resolve_config({}, {**TINY, "train": str(dataset.source), "output": str(output), **overrides})


def make_manifest(num_images: int = 7, prompt_ids: tuple[str, ...] = ("G", "T1", "T2"), dim: int = 5, **changes):
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": "test-encoder",
        "encoder_dtype": "float32",
        "dim": dim,
        "normalized": False,
        "dtype": "float16",
        "prompt_ids": list(prompt_ids),
        "num_images": num_images,
        "dataset_fingerprint": "d" * 16,
        "caption_store_fingerprint": "c" * 16,
    }
    return manifest | changes


def write_store(path: Path, values: np.ndarray, chunk_size: int = 3, **changes) -> FeatureStore:
    """A complete store holding `values` (images, prompts, dim)."""
    images, prompts, dim = values.shape
    manifest = make_manifest(images, tuple(f"P{k}" for k in range(prompts)), dim, **changes)
    writer = FeatureWriter(path, manifest, chunk_size=chunk_size)
    for chunk in writer.pending:
        writer.write(chunk, values[writer.chunk_rows(chunk).start : writer.chunk_rows(chunk).stop])
    return writer.finish()


def random_values(shape: tuple[int, ...] = (7, 3, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
