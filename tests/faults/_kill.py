"""Run a vlmkd CLI in a subprocess and SIGKILL it once its output shows enough finished units.

No hooks in the stage code: the only signal used is what the stage leaves on disk (shards, chunks recorded in
progress.json, checkpoint directories), polled from outside, exactly what a user's crash would leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_S = 0.002
RUN_LIMIT_S = 300.0


@dataclass(frozen=True)
class KillPoint:
    """Kill once `units` more units than at the start of the run are complete, then `unit_fraction` of one
    unit's time later (0: at once). A fraction lands the kill while the next unit is computed or written.
    """

    units: int
    unit_fraction: float = 0.0

    @property
    def id(self) -> str:
        return f"plus-{self.units}" + (f"-and-{self.unit_fraction:.2f}-unit" if self.unit_fraction else "")


@dataclass(frozen=True)
class Run:
    """A finished (or killed) CLI run."""

    returncode: int
    seconds: float
    stdout: str
    stderr: str
    units_at_kill: int | None = None  # units on disk just before the kill, None when not killed
    unit_times: tuple[float, ...] = ()  # seconds from start at which units 1, 2, ... were seen


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment, offline, plus `extra`."""
    # One intra-op thread: the suite shares a small machine, and oversubscribed OpenMP spins make runs 3-4x slower.
    return os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                         "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | (extra or {})  # fmt: skip


def command(args: Sequence[str]) -> list[str]:
    """`python -m vlmkd ARGS...`: the real dispatcher, with the installed package."""
    return [sys.executable, "-m", "vlmkd", *map(str, args)]


def run_cli(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run `vlmkd ARGS` to completion (cwd outside the checkout, so the installed package is what runs)."""
    start = time.perf_counter()
    done = subprocess.run(command(args), cwd=cwd, env=environment(env), capture_output=True, text=True,
                          timeout=RUN_LIMIT_S)  # fmt: skip
    return Run(done.returncode, time.perf_counter() - start, done.stdout, done.stderr)


def run_and_kill(
    args: Sequence[str],
    cwd: Path,
    units: Callable[[], int],
    point: KillPoint | None,
    unit_s: float = 0.0,
    env: dict[str, str] | None = None,
) -> Run:
    """Start `vlmkd ARGS`, wait until `units()` has grown by `point.units`, wait the point's fraction of `unit_s`,
    then SIGKILL it. With `point=None` it runs to the end and only watches: `unit_times` gives when each unit
    appeared. The process may exit on its own before the kill; the caller checks `returncode`."""
    name = point.id if point is not None else "watched"
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    start = time.perf_counter()
    seen, times, last = None, [], -1
    target = None if point is None else units() + point.units
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command(args), cwd=cwd, env=environment(env), stdout=stdout, stderr=stderr)
        try:
            while process.poll() is None:
                if time.perf_counter() - start > RUN_LIMIT_S:
                    raise TimeoutError(f"vlmkd {args[0]} ran past {RUN_LIMIT_S} s")
                count = units()
                if count > last:
                    times += [time.perf_counter() - start] * (count - max(last, 0))
                    last = count
                if target is not None and count >= target:
                    seen = count
                    if point.unit_fraction:
                        time.sleep(point.unit_fraction * unit_s)
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(POLL_S)
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Run(returncode, time.perf_counter() - start, out.read_text(), err.read_text(), seen, tuple(times))


def unit_seconds(run: Run) -> float:
    """Median time between two consecutive units of a watched run."""
    gaps = sorted(b - a for a, b in zip(run.unit_times, run.unit_times[1:], strict=False))
    return gaps[len(gaps) // 2] if gaps else 0.0


def killed(run: Run) -> bool:
    return run.returncode == -signal.SIGKILL


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative POSIX path -> content)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class Chain:
    """A stage killed at each point in turn (each run resuming what the last one left), then rerun to the end."""

    kills: tuple[Run, ...]
    snapshots: tuple[Any, ...]  # what `inspect` saw right after each kill
    final: Run


def kill_chain(
    args: Sequence[str],
    cwd: Path,
    units: Callable[[], int],
    points: Sequence[KillPoint],
    unit_s: float,
    inspect: Callable[[], Any],
) -> Chain:
    """Run `vlmkd ARGS` once per point, killing it there, call `inspect()` after each kill, then rerun to the end.

    Chaining the kills (instead of one fresh store per point) costs one process per point and makes every
    run but the first a resumption of a killed one.
    """
    kills, snapshots = [], []
    for point in points:
        kills.append(run_and_kill(args, cwd, units, point, unit_s))
        snapshots.append(inspect())
    return Chain(tuple(kills), tuple(snapshots), run_cli(args, cwd))
