"""`vlmkd-train --tensorboard`: the metrics records, also as TensorBoard scalars (OUTPUT/tensorboard).

A sink of `vlmkd.train.metrics_log.MetricsLog`: it receives the same records as metrics.jsonl and writes
each quantity under a fixed tag, at the record's global step (epoch values at the epoch's last step, so
both line up):

    loss/total, loss/task, loss/vlmkd, loss/kd           per logged step (only the terms that are on)
    vlmkd/fraction_of_chance, vlmkd/temperature          VLM-KD loss / chance (log batch); tau
    train/lr, train/images_per_s
    epoch/loss/..., epoch/vlmkd/..., epoch/train/...     the same, per epoch

Only rank 0 writes (the trainer opens it where it opens the metrics log). On resume, events past the
checkpoint's step are purged (`SummaryWriter(purge_step=...)`), as the metrics log drops its records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmkd.errors import MissingDependencyError
from vlmkd.train.record_fields import FRACTION, IMAGES_PER_S, LEARNING_RATE, TEMPERATURE, vlmkd_fraction

DIRECTORY = "tensorboard"
EVENT_FILE_GLOB = "events.out.tfevents.*"
# record field -> tag (per step; per epoch the tag is prefixed with "epoch/")
TAGS: dict[str, str] = {
    "loss": "loss/total",
    "task_loss": "loss/task",
    "vlmkd_loss": "loss/vlmkd",
    "kd_loss": "loss/kd",
    FRACTION: "vlmkd/fraction_of_chance",
    TEMPERATURE: "vlmkd/temperature",
    LEARNING_RATE: "train/lr",
    IMAGES_PER_S: "train/images_per_s",
    "skipped_steps": "train/skipped_steps",
}
TERM_WEIGHTS = {"vlmkd_loss": "vlmkd_weight", "kd_loss": "kd_weight"}  # a term is logged when its weight > 0


class TensorBoardLog:
    """Writes metrics records as scalars into `directory` with `torch.utils.tensorboard.SummaryWriter`.

    `batch_size` (global) gives the chance level log(batch) when a record lacks the fraction, and the
    images/s between two step records; `terms_off` are loss fields not logged (their term is switched
    off); `resume_step` purges events after it, `None` starts afresh (older event files are removed).
    """

    def __init__(
        self,
        directory: Path,
        batch_size: int,
        *,
        terms_off: frozenset[str] = frozenset(),
        resume_step: int | None = None,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises this when the tensorboard package is missing
            raise MissingDependencyError(
                "--tensorboard needs the tensorboard package: pip install 'vlmkd[tensorboard]' "
                "(or plot the curves without it: vlmkd plot RUN)"
            ) from None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for stale in directory.glob(EVENT_FILE_GLOB):  # a fresh run replaces the old one's curves
                stale.unlink()
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge, flush_secs=30)
        self.batch_size = batch_size
        self.terms_off = terms_off
        self._last_step: tuple[int, float] | None = None  # (step, time) of the last step record

    @classmethod
    def for_run(cls, output: Path, config: Any, resume_step: int | None) -> TensorBoardLog:
        """The sink of a training run: OUTPUT/tensorboard, with the config's batch size and switched-off terms."""
        off = frozenset(term for term, weight in TERM_WEIGHTS.items() if getattr(config, weight, 0) <= 0)
        return cls(Path(output) / DIRECTORY, config.batch_size, terms_off=off, resume_step=resume_step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add one metrics record's scalars; records of other kinds than step and epoch are ignored."""
        kind, step = record.get("kind"), int(record["step"])
        if kind not in ("step", "epoch"):
            return
        values = {key: record.get(key) for key in TAGS if key not in self.terms_off}
        values[FRACTION] = vlmkd_fraction(record, self.batch_size)
        if kind == "step" and values.get(IMAGES_PER_S) is None:
            values[IMAGES_PER_S] = self._throughput(step)
        prefix = "epoch/" if kind == "epoch" else ""
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(prefix + TAGS[key], float(value), global_step=step)
        self.writer.flush()  # a killed or stopped run keeps every record it logged, as in metrics.jsonl

    def _throughput(self, step: int) -> float | None:
        """Images/s since the previous step record (None for the first one after a start)."""
        now = time.perf_counter()
        last, self._last_step = self._last_step, (step, now)
        if last is None or step <= last[0] or now <= last[1]:
            return None
        return (step - last[0]) * self.batch_size / (now - last[1])

    def close(self) -> None:
        self.writer.close()
