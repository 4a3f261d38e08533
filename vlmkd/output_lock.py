"""One writer per output: while a live process writes a training run, a store or evaluation results, a second
writer refuses in one line instead of mixing its files in.

The lock is `flock` on `.NAME.lock` beside the output (beside, not inside: evaluation results are replaced as a
whole, and a store's folder holds only the store). The kernel drops a `flock` when its process dies, so a crash
or a SIGKILL never leaves an output locked; the file names its holder (PID, host, time) for the message and is
removed by the last holder. Captioning processes share a store by design (they split its shards) and take the
lock shared; whatever replaces or rewrites a store as a whole (import, merge) takes it alone.

`flock` is local to one machine on most network file systems' clients: two hosts writing one output over NFS
are not stopped by it (the caption store's shard publishing stays first-writer-wins there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from vlmkd.errors import InputError

_ATTEMPTS = 5  # a lock file removed between our open and our flock is opened again, a few times at most
_HOLDER_BYTES = 200


def lock_path(output: Path) -> Path:
    """Where the lock of `output` lives: `.NAME.lock` in its parent folder."""
    output = Path(os.path.normpath(Path(output).absolute()))
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def holding(output: Path, *, what: str, flag: str = "--out", shared: bool = False) -> Iterator[None]:
    """Hold the lock of `output` for the block; `InputError` naming the holder if another live process holds it
    (alone, or shared when `shared` is False). `what` names the output in the message ("training run")."""
    lock = lock_path(output)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _acquire(lock, output, what, flag, shared)
    except OSError as error:  # a read-only or full disk: about the output, not our hidden lock file
        raise OSError(error.errno, error.strerror, str(output)) from None
    try:
        _write_holder(descriptor)
        yield
    finally:
        _release(lock, descriptor)


def _acquire(lock: Path, output: Path, what: str, flag: str, shared: bool) -> int:
    for _ in range(_ATTEMPTS):
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise InputError(
                f"{output}: another process ({holder}) is writing this {what}; wait for it to finish, or choose "
                f"another {flag}"
            ) from None
        if _same_file(descriptor, lock):
            return descriptor
        os.close(descriptor)  # its last holder removed it after we opened it: take the new one
    raise InputError(f"{output}: its lock {lock} keeps being replaced; is another process looping on it?")


def _release(lock: Path, descriptor: int) -> None:
    """Remove the lock file if no other process shares it, then drop the lock (closing releases it)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone (again): nobody else holds it
        if _same_file(descriptor, lock):
            lock.unlink(missing_ok=True)
    except OSError:
        pass  # shared with a live process: it removes the file when it is done
    finally:
        os.close(descriptor)


def _same_file(descriptor: int, lock: Path) -> bool:
    try:
        found, held = os.stat(lock), os.fstat(descriptor)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _write_holder(descriptor: int) -> None:
    text = f"PID {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text.encode()[:_HOLDER_BYTES], 0)


def _read_holder(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, _HOLDER_BYTES, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return " ".join(text.split()) or "PID unknown"
