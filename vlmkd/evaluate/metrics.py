"""Top-1 accuracy on the Many / Medium / Few / All splits, per-class accuracy and image features."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from vlmkd.data import ImageList
from vlmkd.data.splits import SPLIT_NAMES, class_splits
from vlmkd.models import Classifier
from vlmkd.models.speed import batch_layout


@dataclass(frozen=True)
class Predictions:
    """Per test image: predicted class, true label and the classifier's image features."""

    predicted: np.ndarray
    labels: np.ndarray
    features: np.ndarray


@torch.no_grad()
def predict(
    model: Classifier,
    dataset: ImageList,
    *,
    image_size: int,
    mean: list[float],
    std: list[float],
    batch_size: int = 256,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
    channels_last: bool = False,
) -> Predictions:
    """Run `model` (in eval mode) over `dataset` once, in dataset order, with the evaluation transform.

    `channels_last` feeds batches in NHWC order (for a model prepared with `apply_speed_settings`)."""
    from tqdm import tqdm

    from vlmkd.data.loaders import build_loader

    loader = build_loader(
        dataset,
        train=False,
        batch_size=batch_size,
        image_size=image_size,
        num_workers=num_workers,
        mean=tuple(mean),
        std=tuple(std),
        flip=False,
    )
    model.eval().to(device)
    predicted, labels, features = [], [], []
    # on a terminal only (disable=None): a log file or a captured stderr keeps to one-line messages
    bar = tqdm(loader, total=len(loader), desc="predict", unit="batch", disable=None if progress else True,
               file=sys.stderr, leave=False)  # fmt: skip
    for images, batch_labels, _ in bar:
        logits, batch_features = model(batch_layout(images.to(device), channels_last), return_features=True)
        predicted.append(logits.argmax(dim=1).cpu())
        labels.append(batch_labels)
        features.append(batch_features.float().cpu())
    return Predictions(torch.cat(predicted).numpy(), torch.cat(labels).numpy(), torch.cat(features).numpy())


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy (%) of each class; NaN for a class without test images."""
    correct = np.bincount(labels, weights=(predicted == labels).astype(np.float64), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def split_accuracy(
    predicted: np.ndarray,
    labels: np.ndarray,
    train_counts: np.ndarray,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, dict[str, float | int | None]]:
    """Top-1 (%) over the test images of each split's classes, with the split's class and image counts.

    A split without classes or test images has accuracy None.
    """
    splits = class_splits(train_counts, many_threshold, few_threshold)
    splits["all"] = np.arange(len(train_counts))
    result: dict[str, dict[str, float | int | None]] = {}
    for name in (*SPLIT_NAMES, "all"):
        members = np.isin(labels, splits[name])
        accuracy = float(100.0 * (predicted[members] == labels[members]).mean()) if members.any() else None
        result[name] = {"top1": accuracy, "classes": int(splits[name].size), "images": int(members.sum())}
    return result


def format_table(results: dict[str, dict[str, float | int | None]], title: str = "top-1 (%)") -> str:
    """The Many / Medium / Few / All table as aligned text."""
    names = ("many", "medium", "few", "all")
    header = f"{title:<12}" + "".join(f"{n.capitalize():>9}" for n in names)
    top1 = "".join(f"{results[n]['top1']:>9.2f}" if results[n]["top1"] is not None else f"{'-':>9}" for n in names)
    classes = "".join(f"{results[n]['classes']:>9d}" for n in names)
    return "\n".join([header, f"{'accuracy':<12}{top1}", f"{'classes':<12}{classes}"])
