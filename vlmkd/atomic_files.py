"""Atomic writes, the one helper every stage publishes its outputs with: a file or a whole directory.

Files: a temporary file beside the target, fsync, rename, fsync of the directory. Directories
(`atomic_directory`, e.g. an evaluation's metrics and plots): a temporary directory filled and fsynced, then
swapped in for the old one. A reader never sees a half-written file or a mix of two runs' files, and a crash
(even SIGKILL) leaves the old content, the new one, or stale `.NAME.PID.tmp` / `.NAME.PID.old` entries beside
it. Those have a fixed name pattern so that stores can recognise and sweep them (`remove_stale_temporaries`,
the caption store's `_TMP_RE`, `sweep_directory_debris`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def temporary_path(path: Path) -> Path:
    """Where a write of `path` by this process stages its content: `.NAME.PID.tmp` in the same directory."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(path: Path) -> None:
    """Delete the `.NAME.*.tmp` files that writes of `path` left behind (processes killed mid-write)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def fsync_dir(directory: Path, *, ignore_errors: bool = False) -> None:
    """Make renames and unlinks in `directory` durable; `ignore_errors` for filesystems that refuse it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        if not ignore_errors:
            raise


@contextlib.contextmanager
def atomic_write(
    path: Path, *, replace: bool = True, durable: bool = True, ignore_dir_errors: bool = False
) -> Iterator[BinaryIO]:
    """A binary handle whose content appears at `path` all at once when the block exits without error.

    `replace=False` never overwrites: if `path` exists already (another process published first), it is
    kept and this content is dropped. `durable=False` skips both fsyncs (rename only); `ignore_dir_errors`
    tolerates filesystems that refuse fsync on directories. The temporary file is removed in every case.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if it exists: the first writer wins
            except FileExistsError:
                pass
            except FileNotFoundError:  # a process that published first swept our temporary file away
                if not path.exists():
                    raise
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent, ignore_errors=ignore_dir_errors)


def write_bytes_atomic(
    path: Path, data: bytes, *, replace: bool = True, durable: bool = True, ignore_dir_errors: bool = False
) -> None:
    """Write `data` to `path` atomically (see `atomic_write` for the options)."""
    with atomic_write(path, replace=replace, durable=durable, ignore_dir_errors=ignore_dir_errors) as handle:
        handle.write(data)


def write_text_atomic(
    path: Path, text: str, *, replace: bool = True, durable: bool = True, ignore_dir_errors: bool = False
) -> None:
    """Write `text` as UTF-8 to `path` atomically (see `atomic_write` for the options)."""
    write_bytes_atomic(
        path, text.encode("utf-8"), replace=replace, durable=durable, ignore_dir_errors=ignore_dir_errors
    )


def write_json_atomic(path: Path, obj: Any, *, replace: bool = True, ignore_dir_errors: bool = False) -> None:
    """Write `obj` as sorted, indented JSON with a final newline to `path`, atomically and durably."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_text_atomic(path, text, replace=replace, ignore_dir_errors=ignore_dir_errors)


def sweep_directory_debris(path: Path) -> None:
    """Tidy what killed `atomic_directory` writes of `path` left: remove their temporaries, and put back an old
    directory that a kill between the two renames of a swap left aside (`.NAME.PID.old` with no `path`)."""
    for old in sorted(path.parent.glob(f".{path.name}.*.old")):
        if not path.exists():
            os.replace(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """A fresh, empty staging directory whose content replaces the directory `path` as one unit when the block
    exits without error; on an error (or a kill) `path` keeps its old content and the staging is removed.

    The swap is two renames (old aside, new in); a kill between them leaves `path` missing and the old
    content in `.NAME.PID.old`, which the next write (or `sweep_directory_debris`) puts back or removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_directory_debris(path)
    staging = temporary_path(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if durable:
            for file in staging.rglob("*"):
                if file.is_file():
                    with open(file, "rb") as handle:
                        os.fsync(handle.fileno())
            fsync_dir(staging, ignore_errors=True)
        if path.exists():
            aside = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, aside)
            os.replace(staging, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, path)
        if durable:
            fsync_dir(path.parent, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
