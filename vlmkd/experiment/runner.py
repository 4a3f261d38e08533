"""One (arm, seed) of an A/B experiment: train with the arm's settings, predict the test split, keep the result.

Each run lives in `OUT/runs/ARM/seedS/`: the training run (`train/`, resumable per epoch) and `result.json`
(written atomically, last), which holds what the report needs: top-1 per split and per class, the confusion
matrix and the text term's final loss against its chance level. A rerun reuses a finished run whose settings
are the arm's, resumes an interrupted one, and refuses a directory made with other settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.atomic_files import write_json_atomic
from vlmkd.errors import InputError

RESULT_FILE = "result.json"
TRAIN_DIR = "train"
LOCK_FILE = ".running"  # "host pid" of the process training this run
# Settings that never change what a run learns (where it writes, how it reports, loader processes).
UNCOUPLED = frozenset({"output", "progress", "log_every", "num_workers", "tensorboard", "threads", "device"})


@dataclass(frozen=True)
class Arm:
    """A recipe of the experiment: its name and the training settings it sets on top of the common ones."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """What every run of an experiment shares: the work directory, the base config and the evaluation split."""

    out: Path
    test: Path
    config: dict[str, Any]  # settings of the base preset / config file
    common: dict[str, Any]  # settings every arm shares (flags), before the arm's own
    many_threshold: int = 100
    few_threshold: int = 20
    keep_checkpoints: bool = False  # False: keep only the last epoch's checkpoint of a finished run

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / arm.name / f"seed{seed}"


def run_identity(config) -> dict[str, Any]:
    """The settings that decide what a run learns: its resolved config without output and reporting settings,
    and without the settings of terms that are off (a baseline is the same baseline at any temperature)."""
    from vlmkd.train.config import KD_SETTINGS, VLMKD_SETTINGS

    identity = {k: v for k, v in config.to_dict().items() if k not in UNCOUPLED}
    if config.vlmkd_weight == 0:
        identity = {k: v for k, v in identity.items() if k not in (*VLMKD_SETTINGS, "features")}
    if config.kd_weight == 0:
        identity = {k: v for k, v in identity.items() if k not in (*KD_SETTINGS, "teacher")}
    return identity


def identity_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings where a cached run differs from what the arm asks now. A setting the cached run does not record
    (added to vlmkd after it ran) counts as unchanged when the arm leaves it at its default."""
    from vlmkd.train.config import TrainConfig, field_default

    defaults = {spec.name: field_default(spec) for spec in TrainConfig.__dataclass_fields__.values()}
    changed = []
    for key, value in current.items():
        before = saved.get(key, defaults.get(key))
        if before != value:
            changed.append(f"{key} ({before!r} -> {value!r})")
    return changed + [f"{key} (no longer a setting)" for key in saved if key not in current and key not in defaults]


def resolve_arm(plan: RunPlan, arm: Arm, seed: int):
    """The arm's `TrainConfig` for `seed`: base config < common settings < the arm's settings."""
    from vlmkd.train.config import resolve_config

    settings = {**plan.common, **arm.settings, "seed": seed, "output": str(plan.run_dir(arm, seed) / TRAIN_DIR)}
    settings.setdefault("progress", False)
    try:
        return resolve_config(plan.config, settings)
    except InputError as error:
        raise InputError(f"arm {arm.name!r}: {error}") from None


def finished_result(plan: RunPlan, arm: Arm, seed: int) -> dict[str, Any] | None:
    """The cached `result.json` of (arm, seed), checked against the arm's settings; None if not finished."""
    result_file = plan.run_dir(arm, seed) / RESULT_FILE
    if not result_file.is_file():
        return None
    result = json.loads(result_file.read_text())
    identity = json.loads(json.dumps(run_identity(resolve_arm(plan, arm, seed)), default=str))
    changes = identity_changes(result.get("settings", {}), identity)
    if changes:
        raise InputError(
            f"{result_file.parent}: made with other settings than arm {arm.name!r} asks now: {', '.join(changes)}; "
            "use another --out, or delete that run to retrain it"
        )
    return result


def run_one(plan: RunPlan, arm: Arm, seed: int) -> dict[str, Any] | None:
    """Train and evaluate `arm` with `seed`, or reuse the finished run; returns its `result.json`, or None when
    another live process is training it (several `vlmkd experiment` processes can share one folder)."""
    result = finished_result(plan, arm, seed)
    if result is not None:
        return result
    config = resolve_arm(plan, arm, seed)
    run_dir = plan.run_dir(arm, seed)
    with claimed(run_dir) as mine:
        if not mine:
            return None
        result = finished_result(plan, arm, seed)  # finished by another process meanwhile
        if result is not None:
            return result
        from vlmkd.train.trainer import train

        started = time.perf_counter()
        train(config, resume="auto")
        identity = json.loads(json.dumps(run_identity(config), default=str))
        result = {"arm": arm.name, "seed": seed, "settings": identity, **evaluate_run(plan, Path(config.output))}
        result["seconds"] = time.perf_counter() - started
        write_json_atomic(run_dir / RESULT_FILE, result)
        if not plan.keep_checkpoints:
            prune_checkpoints(Path(config.output))
        return result


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[bool]:
    """Hold `run_dir`'s lock file while the block runs; yields False when another live process holds it.

    A lock of a process that died (same host, no such pid) is taken over; a lock from another host is
    respected (delete `run_dir/.running` by hand if that host is gone)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _holder_alive(lock):
                yield False
                return
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _holder_alive(lock: Path) -> bool:
    try:
        host, pid = lock.read_text().split()
    except (OSError, ValueError):
        return False  # unreadable or torn: its writer died mid-write
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def evaluate_run(plan: RunPlan, run: Path) -> dict[str, Any]:
    """Top-1 per split and class, the confusion matrix and the text term's final state of a finished run."""
    from vlmkd.data import load_image_list
    from vlmkd.evaluate.metrics import per_class_accuracy, predict, split_accuracy
    from vlmkd.train.checkpoint import load_classifier

    model, meta = load_classifier(run)
    trained = meta["config"]
    test = load_image_list(plan.test)
    classes = len(meta["classnames"])
    if test.num_classes != classes:
        raise InputError(f"{plan.test}: {test.num_classes} classes, the trained model has {classes}")
    preds = predict(
        model, test, image_size=trained["image_size"], mean=trained["mean"], std=trained["std"],
        num_workers=trained["num_workers"],
    )  # fmt: skip
    counts = np.asarray(meta["train_counts"])
    splits = split_accuracy(preds.predicted, preds.labels, counts, plan.many_threshold, plan.few_threshold)
    confusion = np.bincount(preds.labels * classes + preds.predicted, minlength=classes * classes)
    accuracy = per_class_accuracy(preds.predicted, preds.labels, classes)
    return {
        "top1": {name: split["top1"] for name, split in splits.items()},
        "per_class": [None if np.isnan(a) else float(a) for a in accuracy],
        "train_counts": counts.tolist(),
        "classnames": list(meta["classnames"]),
        "confusion": confusion.reshape(classes, classes).tolist(),
        "text_term": text_term(run),
    }


def text_term(run: Path) -> dict[str, float]:
    """The last epoch's VLM-KD loss, its fraction of chance and the temperature (empty without the term)."""
    from vlmkd.train.metrics_log import read_metrics

    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not epochs or "vlmkd_fraction" not in epochs[-1]:
        return {}
    return {k: float(epochs[-1][k]) for k in ("vlmkd_loss", "vlmkd_fraction", "temperature") if k in epochs[-1]}


def prune_checkpoints(run: Path) -> None:
    """Delete every epoch checkpoint of a finished run but the last (the model and the last state are kept)."""
    from vlmkd.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run)
    for checkpoint in run.glob("epoch_*"):
        if checkpoint.is_dir() and checkpoint != last:
            shutil.rmtree(checkpoint, ignore_errors=True)
