"""`evaluate_checkpoint`: split accuracies, per-class plot and t-SNE maps for a trained classifier."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.data import load_image_list
from vlmkd.errors import InputError
from vlmkd.evaluate.metrics import per_class_accuracy, predict, split_accuracy
from vlmkd.evaluate.plots import MIN_DISTINCT_CAPTIONS, TsnePlot, plot_per_class_accuracy, plot_tsne
from vlmkd.train.checkpoint import load_classifier

RESULTS_FILE = "metrics.json"


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | Path,
    out_dir: str | Path,
    *,
    features: str | Path | None = None,
    train: str | Path | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
    plots: bool = True,
    tsne_max: int = 2000,
    batch_size: int = 256,
    num_workers: int = 2,
    device: str = "cpu",
    save_features: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved classifier on `dataset`; writes `metrics.json` (and PNGs) to `out_dir`, returns the results.

    Training counts (which decide the splits) come from the checkpoint. `features` (a caption feature store
    of the training set `train`, default: the one the model was trained on) adds the caption t-SNE.
    `save_features` writes the test images' features and the VLM-KD loss module to `out_dir/features`
    (see `vlmkd.evaluate.features`).
    `progress` draws a bar over prediction and prints a line with its time for every plot (on stderr).
    """
    model, meta = load_classifier(checkpoint, device)
    test = load_image_list(dataset)
    classnames = list(meta["classnames"])
    if test.num_classes != len(classnames):
        raise InputError(f"{dataset}: {test.num_classes} classes, but the model was trained on {len(classnames)}")
    counts = np.asarray(meta["train_counts"])
    config = meta.get("config", {})
    preds = predict(
        model,
        test,
        image_size=config.get("image_size", 32),
        mean=config.get("mean", [0.485, 0.456, 0.406]),
        std=config.get("std", [0.229, 0.224, 0.225]),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accuracy = per_class_accuracy(preds.predicted, preds.labels, len(classnames))
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "dataset": str(dataset),
        "thresholds": {"many": many_threshold, "few": few_threshold},
        "top1": split_accuracy(preds.predicted, preds.labels, counts, many_threshold, few_threshold),
        "per_class": {
            "classnames": classnames,
            "train_counts": counts.tolist(),
            "top1": [None if np.isnan(a) else float(a) for a in accuracy],
        },
        "plots": {},
        "notes": {},  # plot name -> why it holds a message instead of a map
    }
    if save_features:
        from vlmkd.evaluate.features import save_eval_features

        results["features"] = str(save_eval_features(out, checkpoint, test, preds))
    if plots:
        thresholds = {"many_threshold": many_threshold, "few_threshold": few_threshold}
        with _stage("per-class accuracy plot", progress):
            per_class = plot_per_class_accuracy(
                accuracy, counts, classnames, out / "per_class_accuracy.png", **thresholds
            )
        results["plots"]["per_class"] = str(per_class)
        tsne: dict[str, TsnePlot] = {}
        with _stage(f"t-SNE of {min(tsne_max, len(preds.features))} image features", progress):
            tsne["tsne_images"] = plot_tsne(
                preds.features,
                preds.labels,
                classnames,
                out / "tsne_image_features.png",
                title="t-SNE of image features (test set)",
                max_points=tsne_max,
                what="image features",
            )
        store_path = features if features is not None else config.get("features")
        if store_path:
            with _stage("t-SNE of caption features", progress):
                train_set = train or config.get("train")
                tsne["tsne_captions"] = _caption_tsne(Path(store_path), train_set, classnames, out, tsne_max)
        for name, plot in tsne.items():
            results["plots"][name] = str(plot.path)
            if plot.note:
                results["notes"][name] = plot.note
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    return results


@contextlib.contextmanager
def _stage(label: str, progress: bool) -> Iterator[None]:
    """With `progress`, `label ...` on stderr before the work and its time after it, on the same line."""
    start = time.perf_counter()
    if progress:
        print(f"{label} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if progress:
            print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _caption_tsne(
    store_path: Path, train: str | Path | None, classnames: list[str], out: Path, max_points: int
) -> TsnePlot:
    from vlmkd.encode.store import FeatureStore

    if not train:
        raise InputError(f"{store_path}: pass --train, the dataset these caption features were encoded from")
    store = FeatureStore.open(store_path)
    dataset = load_image_list(train)
    store.check_dataset(dataset)
    num_images, num_prompts, dim = store.features.shape
    points = np.asarray(store.features, dtype=np.float32).reshape(num_images * num_prompts, dim)
    labels = np.repeat(dataset.labels(), num_prompts)
    distinct = len(np.unique(points, axis=0))
    title = f"t-SNE of caption features ({num_prompts} prompt(s) per image, {distinct} distinct of {len(points)})"
    return plot_tsne(
        points,
        labels,
        classnames,
        out / "tsne_caption_features.png",
        title=title,
        max_points=max_points,
        what="captions",
        min_distinct=MIN_DISTINCT_CAPTIONS,
    )
