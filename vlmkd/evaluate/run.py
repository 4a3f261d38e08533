"""`run_evaluation`: split accuracies, per-class plot and t-SNE maps for a trained classifier."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vlmkd.atomic_files import atomic_directory
from vlmkd.bounded_read import short_repr
from vlmkd.data import ImageList, load_image_list
from vlmkd.errors import InputError
from vlmkd.evaluate.config import EvalConfig
from vlmkd.evaluate.metrics import per_class_accuracy, predict, split_accuracy
from vlmkd.folder_kind import EVAL, refuse_unless
from vlmkd.models.speed import apply_speed_settings
from vlmkd.output_lock import holding
from vlmkd.reporting.eval_plots import MIN_DISTINCT_CAPTIONS, Plot, plot_per_class_accuracy, plot_tsne
from vlmkd.train.checkpoint import load_classifier

RESULTS_FILE = "metrics.json"


@dataclass(frozen=True)
class EvalResult:
    """An evaluation: top-1 (%) per split (`top1["few"]`; None for a split without classes), per-class accuracy,
    the figures and where things went.

    `splits` adds each split's class and test-image counts; `record` is what `metrics.json` holds; `figures`
    are matplotlib `Figure`s (built without pyplot, so they leave a notebook's backend alone) saved as the PNGs in
    `plots`; `notes` say why a
    figure holds a message instead of a map.
    """

    top1: dict[str, float | None]
    splits: dict[str, dict[str, float | int | None]]
    per_class: dict[str, list]  # classnames, train_counts, top1 (None for a class without test images)
    figures: dict[str, Figure]
    plots: dict[str, Path]
    notes: dict[str, str]
    out: Path
    record: dict[str, Any]

    @property
    def metrics_file(self) -> Path:
        return self.out / RESULTS_FILE


def evaluate_checkpoint(checkpoint: str | Path, dataset: str | Path, out_dir: str | Path, **settings: Any) -> dict:
    """Evaluate a saved classifier on `dataset` into `out_dir`; returns what `metrics.json` holds.

    `settings` are the other `EvalConfig` fields (features, train, thresholds, plots, device...).
    """
    return run_evaluation(EvalConfig(checkpoint=checkpoint, dataset=dataset, out=out_dir, **settings)).record


def run_evaluation(config: EvalConfig) -> EvalResult:
    """Evaluate `config.checkpoint` on `config.dataset`; writes `metrics.json` (with the config) and the PNGs.

    Training counts (which decide the splits) come from the checkpoint. `features` (a caption feature store
    of the training set `train`, default: the one the model was trained on) adds the caption t-SNE.
    `save_features` writes the test images' features and the VLM-KD loss module to `out/features`
    (see `vlmkd.evaluate.features`). `progress` draws a bar over prediction and prints a line with its time
    for every plot (on stderr).
    """
    if config.checkpoint is None or config.dataset is None:
        raise InputError("evaluation needs a checkpoint and a test dataset")
    with holding(config.out_dir, what="folder of evaluation results"):  # one evaluation writes it at a time
        return _evaluate(config)


def _evaluate(config: EvalConfig) -> EvalResult:
    checkpoint, dataset, out, progress = config.checkpoint, config.dataset, config.out_dir, config.progress
    many_threshold, few_threshold, tsne_max = config.many_threshold, config.few_threshold, config.tsne_max
    refuse_unless(out, {EVAL}, stage="folder of evaluation results")  # it is replaced as a whole
    model, meta = load_classifier(checkpoint, config.device)
    apply_speed_settings(model, channels_last=config.channels_last, compile=config.compile)
    test = load_image_list(dataset)
    classnames = list(meta["classnames"])
    check_test_classes(test, classnames, dataset)
    counts = np.asarray(meta["train_counts"])
    trained = meta.get("config", {})
    preds = predict(
        model,
        test,
        **transform_settings(trained, checkpoint),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        device=config.device,
        progress=progress,
        channels_last=config.channels_last,
    )
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
    made: dict[str, Plot] = {}
    # Every output is staged and replaces `out` as one unit: never new plots beside an old metrics.json.
    with atomic_directory(out) as staging:
        if config.save_features:
            from vlmkd.evaluate.features import save_eval_features

            saved = save_eval_features(staging, checkpoint, test, preds)
            results["features"] = str(out / saved.relative_to(staging))
        if config.plots:
            thresholds = {"many_threshold": many_threshold, "few_threshold": few_threshold}
            with _stage("per-class accuracy plot", progress):
                made["per_class"] = plot_per_class_accuracy(
                    accuracy, counts, classnames, staging / "per_class_accuracy.png", **thresholds
                )
            with _stage(f"t-SNE of {min(tsne_max, len(preds.features))} image features", progress):
                made["tsne_images"] = plot_tsne(
                    preds.features,
                    preds.labels,
                    classnames,
                    staging / "tsne_image_features.png",
                    title="t-SNE of image features (test set)",
                    max_points=tsne_max,
                    what="image features",
                )
            features, train = config.features, config.train
            store_path = features if features is not None else training_input(meta, "features", checkpoint)
            if store_path:
                with _stage("t-SNE of caption features", progress):
                    train_set = train if train is not None else training_input(meta, "train", checkpoint)
                    made["tsne_captions"] = _caption_tsne(
                        Path(store_path),
                        train_set,
                        meta,
                        classnames,
                        staging,
                        tsne_max,
                        own_train=train is None,
                        own_features=features is None,
                    )
            for name, plot in made.items():
                results["plots"][name] = str(out / plot.path.relative_to(staging))
                if plot.note:
                    results["notes"][name] = plot.note
        results["config"] = config.to_dict()  # `EvalConfig.from_dict(...)` reruns this evaluation
        (staging / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    return EvalResult(
        top1={name: split["top1"] for name, split in results["top1"].items()},
        splits=results["top1"],
        per_class=results["per_class"],
        figures={name: plot.figure for name, plot in made.items()},
        plots={name: Path(path) for name, path in results["plots"].items()},
        notes=results["notes"],
        out=out,
        record=results,
    )


def check_test_classes(test: ImageList, classnames: list[str], dataset: str | Path) -> None:
    """Refuse a test set whose classes are not the model's: by count, and by name where the test set names them."""
    if test.num_classes != len(classnames):
        raise InputError(f"{dataset}: {test.num_classes} classes, but the model was trained on {len(classnames)}")
    if test.classnames == tuple(f"class_{k}" for k in range(test.num_classes)):
        return  # no class-name file: nothing to compare by content
    for label, (theirs, ours) in enumerate(zip(test.classnames, classnames, strict=True)):
        if theirs != ours:
            raise InputError(
                f"{dataset}: class {label} is {short_repr(theirs)} in the test set but {short_repr(ours)} for the "
                "model: the test labels would be scored against other classes (reorder its class names)"
            )


def transform_settings(config: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """Image size and normalisation the model was trained with, checked (they come from a user-editable file)."""
    size = config.get("image_size", 32)
    mean, std = config.get("mean", [0.485, 0.456, 0.406]), config.get("std", [0.229, 0.224, 0.225])
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std]) if (
        isinstance(mean, list) and isinstance(std, list)) else False  # fmt: skip
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1) or not numbers:
        raise InputError(f"{checkpoint}: model.json config has a bad image_size, mean or std")
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in [*mean, *std]) or min(std) <= 0:
        raise InputError(f"{checkpoint}: model.json config needs 3 finite mean values and 3 positive std values")
    return {"image_size": size, "mean": mean, "std": std}


def training_input(meta: dict[str, Any], name: str, checkpoint: str | Path) -> str | None:
    """The training set or feature store of the model: the absolute path recorded at training time, else the
    config's path (relative ones resolved against the working directory, as older vlmkd did)."""
    recorded = meta.get("inputs", {}).get(name) if isinstance(meta.get("inputs"), dict) else None
    value = recorded if recorded is not None else meta.get("config", {}).get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{checkpoint}: model.json records {name} as {short_repr(value)}, not a path")
    return value or None


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
    store_path: Path,
    train: str | Path | None,
    meta: dict[str, Any],
    classnames: list[str],
    out: Path,
    max_points: int,
    *,
    own_train: bool,
    own_features: bool,
) -> Plot:
    """Caption t-SNE of the training set's features. The model's own training set and feature store (`own_*`:
    not given by the user) must still hold what the model was trained on: their fingerprints are in model.json."""
    from vlmkd.encode.store import FeatureStore

    if not train:
        raise InputError(f"{store_path}: pass --train, the dataset these caption features were encoded from")
    store = FeatureStore.open(store_path)
    dataset = load_image_list(train)
    if own_train and meta.get("train_fingerprint") not in (None, dataset.fingerprint()):
        raise InputError(
            f"{train}: the training set changed since the model was trained (fingerprint "
            f"{meta['train_fingerprint']} then, {dataset.fingerprint()} now); pass --train and --features explicitly"
        )
    if own_features and meta.get("features_fingerprint") not in (None, store.fingerprint()):
        raise InputError(
            f"{store_path}: the feature store changed since the model was trained (fingerprint "
            f"{meta['features_fingerprint']} then, {store.fingerprint()} now); pass --features and --train explicitly"
        )
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
