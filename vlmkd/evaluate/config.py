"""`EvalConfig`: every setting of an evaluation, shared by `vlmkd-eval`, `vlmkd.evaluate` and the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmkd.config import StageConfig, in_range
from vlmkd.errors import InputError


@dataclass
class EvalConfig(StageConfig):
    """Which classifier to evaluate on which test set, into which folder, with which splits and figures."""

    checkpoint: Path | None = None  # run directory or epoch_NNNN checkpoint of vlmkd-train
    dataset: Path | None = None  # test set: list file or ImageFolder directory
    out: Path | None = None  # metrics.json and the plots (None: CHECKPOINT/eval)
    features: Path | None = None  # caption feature store for the caption t-SNE (None: the training one)
    train: Path | None = None  # dataset the feature store was encoded from (None: the training set)
    many_threshold: int = 100  # Many: more training images than this
    few_threshold: int = 20  # Few: fewer training images than this
    plots: bool = True
    tsne_max: int = field(default=2000, metadata=in_range(ge=1))  # t-SNE points at most (a seeded subsample)
    batch_size: int = field(default=256, metadata=in_range(ge=1))
    num_workers: int = field(default=2, metadata=in_range(ge=0))
    device: str = "cpu"
    save_features: bool = False  # also write the test images' features and the VLM-KD loss module to OUT/features
    progress: bool = False  # a bar over prediction and a timed line per plot (on stderr)
    channels_last: bool = False  # speed settings of vlmkd.models.speed; predictions do not depend on them
    compile: bool = False

    def check(self) -> None:
        if not 0 <= self.few_threshold <= self.many_threshold:
            raise InputError(f"thresholds must satisfy 0 <= few ({self.few_threshold}) <= many ({self.many_threshold})")

    @property
    def out_dir(self) -> Path:
        """Where the results go: `out`, else CHECKPOINT/eval."""
        if self.out is not None:
            return self.out
        if self.checkpoint is None:
            raise InputError("no checkpoint to evaluate: set `checkpoint` (a vlmkd-train run directory)")
        return self.checkpoint / "eval"
