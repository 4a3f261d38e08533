"""Wall time of a short `vlmkd-train` run against its torch thread count: which default is sane?

Runs the real command line (embedded MNIST-LT, the `mnist_lt` preset, one epoch, no features) once per
thread setting per round, rounds interleaved because the machine is shared; reports best-of-N and median
wall seconds, the load average before and after, and the thread count vlmkd-train chose by itself.

    python benchmarks/bench_train_threads.py                  # threads 1, 2, 4, all cores and the default
    python benchmarks/bench_train_threads.py --rounds 3 --max-train-per-class 100
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import benchmark_parser, interleave, load_average, machine, markdown_table, seconds_series


def train_seconds(data: Path, out: Path, threads: str | None, epochs: int) -> tuple[float, str]:
    """Seconds of one `vlmkd-train` run and the thread count its header reports."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "vlmkd", "train", "--config", "mnist_lt", "--train", str(data / "train.txt")]
    command += ["--output", str(out), "--epochs", str(epochs), "--no-progress", "--num-workers", "0"]
    if threads is not None:
        command += ["--threads", threads]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    found = re.search(r"(\d+) torch threads?", result.stdout)
    return seconds, found[1] if found else "?"


def main() -> None:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-train-per-class", type=int, default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = [str(n) for n in sorted({1, 2, 4, cores}) if n <= cores] + [None]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make = [sys.executable, "-m", "vlmkd", "data", "make-demo", str(data)]
        if args.max_train_per_class:
            make += ["--max-train-per-class", str(args.max_train_per_class)]
        subprocess.run(make, check=True, capture_output=True)
        print(f"machine: {machine()}; load average before: {load_average()}")
        chosen: set[str] = set()  # the thread counts vlmkd-train picked by itself

        def run_with(setting: str | None) -> Callable[[], float]:
            def one_round() -> float:
                seconds, reported = train_seconds(data, Path(tmp) / "run", setting, args.epochs)
                if setting is None:
                    chosen.add(reported)
                return seconds

            return one_round

        measured = interleave({setting: run_with(setting) for setting in settings}, rounds=args.rounds)
        print(f"load average after: {load_average()}")
        rows = []
        for setting, values in measured.items():
            series = seconds_series(values)
            name = setting if setting is not None else f"default (chose {', '.join(sorted(chosen))})"
            rows.append([name, f"{series.best:.1f}", f"{series.median:.1f}"])
        print(markdown_table(["--threads", "best (s)", "median (s)"], rows))


if __name__ == "__main__":
    main()
