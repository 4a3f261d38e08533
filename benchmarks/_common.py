"""What every benchmark script shares: one row's repeated measurements and the report's machine line.

Benchmarks time their rows in interleaved rounds (each row once per round) because the machines are shared;
`Series` holds one value per round and reports best-of-N and the median in the direction that is better.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field

import torch


@dataclass
class Series:
    """One value per timed round: seconds (lower is better) or a rate such as images/s (`higher_is_better`)."""

    higher_is_better: bool = False
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def best(self) -> float:
        """The best round: the largest rate or the smallest time."""
        return max(self.values) if self.higher_is_better else min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __len__(self) -> int:
        return len(self.values)


def seconds_series(values: list[float] | tuple[float, ...] = ()) -> Series:
    """A series of durations in seconds."""
    return Series(False, list(values))


def rate_series(values: list[float] | tuple[float, ...] = ()) -> Series:
    """A series of rates (items per second)."""
    return Series(True, list(values))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. "1.9, 2.3, 2.0" (how busy the shared machine was)."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> str:
    """CPU, core count, torch version and threads, and the GPU if any, for a report's header."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}"
    )
