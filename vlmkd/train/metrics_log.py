"""The JSONL metrics log: one record per logged step and per epoch, each loss term by name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class RecordSink(Protocol):
    """Another destination of the same records (e.g. `vlmkd.train.tensorboard_log.TensorBoardLog`)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Appends JSON lines to `path`. On resume, records past the checkpoint's step are dropped first, so
    the log of a resumed run reads like that of an uninterrupted one. Every record also goes to `sinks`."""

    def __init__(self, path: Path, resume_step: int | None = None, sinks: Sequence[RecordSink] = ()) -> None:
        self.path = path
        self.sinks = list(sinks)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if line and _step(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        """Close the sinks (the JSON lines are closed after every record)."""
        for sink in self.sinks:
            sink.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a killed process: drop it


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
