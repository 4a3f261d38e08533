"""The CPU thread count training and evaluation use when `--threads` is not given.

torch's own default (one thread per core) oversubscribes a machine where other work runs: OpenMP threads
spin waiting for each other on cores that are busy, and a small network then trains many times slower than
on one thread (benchmarks/bench_train_threads.py measures it). So the default counts only the cores that
are idle (cores minus the 1-minute load average), shares them among the processes of this machine under
torchrun, and stops at MAX_DEFAULT_THREADS, past which the CIFAR-sized models of the presets gain little.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_DEFAULT_THREADS = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's limit), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load: float | None = None, local_processes: int | None = None) -> int:
    """min(MAX_DEFAULT_THREADS, idle cores per local process), at least 1.

    `cores`, `load` (runnable tasks, the 1-minute load average) and `local_processes` (torchrun's
    LOCAL_WORLD_SIZE) default to this machine's values.
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    idle = cores - round(load)
    return max(1, min(MAX_DEFAULT_THREADS, idle // max(1, local_processes), cores // max(1, local_processes)))


def add_threads_flag(parser: Any, what: str = "torch") -> None:
    """`--threads N` on a CLI's parser, with the default this module picks."""
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help=f"CPU threads for {what} (default: the idle cores, at most {MAX_DEFAULT_THREADS})",
    )  # fmt: skip


@contextmanager
def torch_threads(requested: int | None) -> Iterator[int]:
    """torch's CPU threads set to `requested` (None: `default_threads()`) inside the block and restored after it,
    so a stage called from Python leaves its caller's setting alone; yields the count."""
    import torch

    from vlmkd.errors import InputError

    if requested is not None and requested < 1:
        raise InputError(f"--threads must be at least 1, got {requested}")
    previous = torch.get_num_threads()
    threads = requested or default_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
