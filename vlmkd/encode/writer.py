"""Write a feature store chunk by chunk so that a crash (even SIGKILL) loses at most the chunk in flight.

Each chunk (a run of images) goes into the preallocated memory-mapped array, is flushed to disk, and only
then is recorded in `progress.json` (replaced atomically). A rerun with the same job skips recorded chunks;
the manifest is written (atomically) once every chunk is in, which is what makes the store complete.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlmkd.atomic_files import fsync_dir, remove_stale_temporaries, write_json_atomic
from vlmkd.encode.store import FEATURES_FILE, MANIFEST_FILE, PROGRESS_FILE, FeatureStore, Progress, read_json
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.folder_kind import FEATURES, refuse_unless


class FeatureWriter:
    """Fills the store at `path` for one job (its manifest); resumes that job's unfinished store."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, chunk_size: int = 1024, overwrite: bool = False):
        if chunk_size < 1:
            raise InputError(f"chunk size must be at least 1 image, got {chunk_size}")
        self.path = Path(path)
        self.manifest = json.loads(json.dumps(manifest))  # the form it has once read back from disk
        self._complete = False
        self._array: np.ndarray | None = None
        self._claim_directory(overwrite)
        if self._complete:
            return
        progress_file = self.path / PROGRESS_FILE
        if progress_file.exists():
            found = _load(Progress.load, progress_file, overwrite)
            self._refuse_other_job(found.manifest if found else None, overwrite)
        if progress_file.exists():
            self.progress = found
        else:
            self.progress = Progress(self.manifest, chunk_size, frozenset())
            write_json_atomic(progress_file, self.progress.to_json())
        self._array = self._open_array()

    @property
    def pending(self) -> list[int]:
        """Chunks not yet written, in order (empty for a store that was already complete)."""
        if self._complete:
            return []
        return [chunk for chunk in range(self.progress.num_chunks) if chunk not in self.progress.done]

    def chunk_rows(self, chunk: int) -> range:
        """The image indices that `chunk` covers."""
        return self.progress.chunk_rows(chunk)

    def write(self, chunk: int, values: np.ndarray) -> None:
        """Store `values` (images in the chunk, prompts, dim) for `chunk`, durably, then record it as done."""
        assert self._array is not None, "write() after finish() or on a complete store"
        rows = self.chunk_rows(chunk)
        expected = (len(rows), *self._array.shape[1:])
        if values.shape != expected:
            raise ValueError(f"chunk {chunk} must be {expected}, got {values.shape}")
        self._array[rows.start : rows.stop] = values
        self._array.flush()
        self.progress = Progress(self.progress.manifest, self.progress.chunk_size, self.progress.done | {chunk})
        write_json_atomic(self.path / PROGRESS_FILE, self.progress.to_json())

    def finish(self) -> FeatureStore:
        """Seal the store (manifest last) once every chunk is written, and open it for reading."""
        if not self._complete:
            if self.pending:
                raise RuntimeError(f"{self.path}: chunks {self.pending[:5]}... are not written yet")
            assert self._array is not None
            self._array.flush()
            self._array = None
            write_json_atomic(self.path / MANIFEST_FILE, self.manifest)
            (self.path / PROGRESS_FILE).unlink()
            fsync_dir(self.path)
            self._complete = True
        return FeatureStore.open(self.path)

    def _claim_directory(self, overwrite: bool) -> None:
        """Decide what to do with what is at `path` already: reuse, resume, replace or refuse."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a directory")
        # Only a feature store is ever resumed or (with --overwrite) replaced: never a caption store or a run.
        refuse_unless(self.path, {FEATURES}, stage="feature store")
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST_FILE, PROGRESS_FILE):  # left by a crash inside `write_json_atomic`
            remove_stale_temporaries(self.path / name)
        manifest_file = self.path / MANIFEST_FILE
        if manifest_file.exists():
            self._refuse_other_job(_load(read_json, manifest_file, overwrite), overwrite)
            if manifest_file.exists():
                (self.path / PROGRESS_FILE).unlink(missing_ok=True)  # left by a crash right after sealing
                self._complete = True

    def _refuse_other_job(self, found: Any, overwrite: bool) -> None:
        """StoreMismatchError if `found` (a manifest on disk) is another job, or with `overwrite`, delete it."""
        if found == self.manifest:
            return
        if not overwrite:
            differences = _differences(found, self.manifest)
            raise StoreMismatchError(
                f"{self.path} holds features of another job ({differences}); pass --overwrite to replace "
                "them or choose another --out"
            )
        for name in (MANIFEST_FILE, PROGRESS_FILE, FEATURES_FILE):
            (self.path / name).unlink(missing_ok=True)

    def _open_array(self) -> np.ndarray:
        """The preallocated memmap; a missing or mis-shaped one (crash while creating it) restarts the job."""
        file = self.path / FEATURES_FILE
        manifest = self.progress.manifest
        shape = (manifest["num_images"], len(manifest["prompt_ids"]), manifest["dim"])
        if file.exists():
            try:
                array = np.lib.format.open_memmap(file, mode="r+")
                if array.shape == shape and array.dtype == np.float16:
                    allocate(file)
                    return array
            except (OSError, ValueError):
                pass
        if self.progress.done:
            self.progress = Progress(manifest, self.progress.chunk_size, frozenset())
            write_json_atomic(self.path / PROGRESS_FILE, self.progress.to_json())
        array = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=shape)
        allocate(file)
        return array


def allocate(file: Path) -> None:
    """Reserve the disk blocks of the (sparse) memory-mapped array up front: on a full disk this is an ENOSPC
    error now, instead of a SIGBUS (no message, no traceback) when a later chunk touches an unbacked page."""
    descriptor = os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, os.fstat(descriptor).st_size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without it: nothing to reserve
            raise OSError(error.errno, error.strerror, str(file)) from None
    finally:
        os.close(descriptor)


def _load(loader: Callable[[Path], Any], file: Path, overwrite: bool) -> Any:
    """`loader(file)`, or None for an unreadable file that `overwrite` allows to be replaced."""
    try:
        return loader(file)
    except InputError:
        if overwrite:
            return None
        raise


def _differences(found: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(found, dict):
        return "unreadable manifest"
    keys = [key for key in wanted if found.get(key) != wanted[key]]
    return "; ".join(f"{key}: {_short(found.get(key))} on disk, {_short(wanted[key])} now" for key in keys[:4])


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
