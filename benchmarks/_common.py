"""The benchmark harness: what every script in benchmarks/ shares, so that a script holds only its cases.

- Measuring: `interleave` runs every row once per round, in turn, because the machines are shared: each row then
  sees the same load round by round, and ratios between rows taken in one round cancel the drifts. A row is a
  function returning its measurement for one round (`timer` makes one of any callable); `Series` holds one value
  per round and reports best-of-N and the median in the direction that is better.
- Reporting: `markdown_table`, `write_report` (the Markdown report and, given records, a JSON file beside it),
  and `machine` / `load_average` for the header line every report starts with.
- Data: `write_image_dataset` writes a list-file dataset of synthetic RGB images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from vlmkd.data import ImageList

K = TypeVar("K")
R = TypeVar("R")
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


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


def seconds_series(values: Iterable[float] = ()) -> Series:
    """A series of durations in seconds."""
    return Series(False, list(values))


def rate_series(values: Iterable[float] = ()) -> Series:
    """A series of rates (items per second)."""
    return Series(True, list(values))


def interleave(
    rows: Mapping[K, Callable[[], R]],
    *,
    rounds: int | None = None,
    seconds: float | None = None,
    min_rounds: int = 1,
    max_rounds: int = 10_000,
    rotate: bool = False,
) -> dict[K, list[R]]:
    """Each row's measurements, one per round: every round calls every row once, in turn.

    Stops after `rounds` rounds, or once `seconds` have passed and at least `min_rounds` ran (never past
    `max_rounds`). `rotate` starts each round one row later, so that no row always runs first (or always right
    after the same neighbour, whose leftover work it would pay for).
    """
    if (rounds is None) == (seconds is None):
        raise ValueError("give rounds or seconds")
    names = list(rows)
    results: dict[K, list[R]] = {name: [] for name in names}
    deadline = time.perf_counter() + (seconds or 0.0)

    def another_round(done: int) -> bool:
        if done >= max_rounds:
            return False
        return done < rounds if rounds is not None else done < min_rounds or time.perf_counter() < deadline

    done = 0
    while another_round(done):
        shift = done % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            results[name].append(rows[name]())
        done += 1
    return results


def timer(run: Callable[[], object], clock: str = "wall") -> Callable[[], float]:
    """`run` as a row: the seconds one call takes, on the wall clock or the process's CPU clock ("cpu": the work
    this process did, without the time slices other processes on a shared machine took)."""
    now = CLOCKS[clock]

    def timed() -> float:
        start = now()
        run()
        return now() - start

    return timed


def benchmark_parser(
    doc: str, quick: str | None = "small smoke run; prints, writes nothing"
) -> argparse.ArgumentParser:
    """A script's argument parser, described by its docstring's first line, with `--quick` (a small smoke run that
    prints its report and writes nothing; `quick` is its help) unless `quick` is None."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    return parser


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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column, "l" or "r" (default: left, then right-aligned numbers)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in [header, rule, *rows])


def write_report(out: Path, markdown: str, records: object = None) -> None:
    """Write the Markdown report to `out` and, given `records` (plain data, dataclasses anywhere inside), the
    same-named .json beside it; say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    written = [out]
    if records is not None:
        out.with_suffix(".json").write_text(json.dumps(records, indent=1, default=_plain))
        written.append(out.with_suffix(".json"))
    print(f"wrote {' and '.join(map(str, written))}")


def _plain(value: Any) -> Any:
    """What JSON cannot write by itself: dataclasses as dicts, anything else (paths...) as text."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def noise_image(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
    """Uniform RGB noise: the default picture of `write_image_dataset`."""
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_image_dataset(
    root: Path,
    count: int,
    *,
    size: int = 32,
    suffix: str = "png",
    classes: int = 10,
    pixels: Callable[[np.random.Generator, int, int], np.ndarray | Image.Image] = noise_image,
    classnames: Sequence[str] | None = None,
    seed: int = 0,
) -> ImageList:
    """`count` RGB images as `root/<label>/<index>.<suffix>` (label = index % classes; JPEG at quality 90) listed in
    `root/train.txt` (and `classnames` in classnames.txt), loaded back as an `ImageList`. `pixels(rng, index,
    size)` draws image `index`."""
    from vlmkd.data import load_image_list

    rng = np.random.default_rng(seed)
    lines = []
    for index in range(count):
        label = index % classes
        relative = f"{label}/{index:06d}.{suffix}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image = pixels(rng, index, size)
        image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        image.convert("RGB").save(root / relative, **({"quality": 90} if suffix in ("jpg", "jpeg") else {}))
        lines.append(f"{relative} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    return load_image_list(root / "train.txt")
