"""Per-shard lock files, so that several captioning processes on one store split its shards instead of racing.

`.shard-K-of-N.parquet.lock` holds the claiming process's PID and host. A process claims a shard before it
captions it and releases the lock once the shard file is published; it skips a shard whose lock belongs to a
live process. A lock left by a process that died (same host, PID gone) is taken over. Locks only divide the
work: shard files are still published first-writer-wins, so two writers of one shard (a lock taken over from a
PID that was reused, or processes on different hosts) can never corrupt or delete each other's results.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

FRESH_S = 10.0  # an unreadable lock younger than this is still being written by its process


def lock_path(shard_file: Path) -> Path:
    return shard_file.with_name(f".{shard_file.name}.lock")


def claim(shard_file: Path) -> bool:
    """Take the lock of the shard published at `shard_file`; False if a live process holds it (or it is done)."""
    lock = lock_path(shard_file)
    for _ in range(2):
        if shard_file.exists():
            return False
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if holder_alive(lock):
                return False
            lock.unlink(missing_ok=True)  # its process died: take the shard over
            continue
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        except OSError:  # a full disk: leave no empty lock behind (nobody could tell whose it was)
            lock.unlink(missing_ok=True)
            raise
        return not shard_file.exists()  # published by another process in the meantime: nothing to do
    return False


def release(shard_file: Path) -> None:
    """Drop this process's lock of the shard (after publishing it, or on the way out)."""
    lock = lock_path(shard_file)
    if holder(lock) == (os.getpid(), socket.gethostname()):
        lock.unlink(missing_ok=True)


def remove_if_stale(shard_file: Path) -> None:
    """Remove the shard's lock if its holder is gone (a process killed between publishing and releasing)."""
    lock = lock_path(shard_file)
    if lock.exists() and not holder_alive(lock):
        lock.unlink(missing_ok=True)


def holder(lock: Path) -> tuple[int, str] | None:
    """(PID, host) written in `lock`, or None if it is missing or unreadable."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def holder_alive(lock: Path) -> bool:
    """Whether the lock's process still runs. Another host's lock is taken as alive (it cannot be checked);
    this process's own lock (left by an earlier run in the same process) and an unreadable one are not."""
    found = holder(lock)
    if found is None:  # being written right now (created, PID not in yet), or garbage left by a crash
        try:
            return time.time() - lock.stat().st_mtime < FRESH_S
        except OSError:
            return False
    pid, host = found
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True
