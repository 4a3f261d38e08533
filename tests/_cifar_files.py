"""Tiny CIFAR archives in the official python-pickle layout, written the way the originals were.

The official files were pickled by Python 2 at protocol 2: dict keys and the array bytes are Python 2 `str`
(SHORT_BINSTRING / BINSTRING opcodes) and the array is rebuilt by `numpy.core.multiarray._reconstruct`.
`Py2Pickler` writes exactly those opcodes, so the tests read what a real download holds.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing bytes as Python 2 strings and numpy's array rebuild under its old module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_images(count: int, seed: int) -> np.ndarray:
    """(count, 3072) uint8 rows, channel-major like CIFAR's."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar10(folder: Path, per_class_train: int, per_class_test: int) -> dict[str, tuple[np.ndarray, list]]:
    """`folder/cifar-10-batches-py/` with 5 training batches, a test batch and batches.meta; returns the rows."""
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    labels = [k % 10 for k in range(10 * per_class_train)]
    rows = cifar_images(len(labels), seed=1)
    written = {}
    for b in range(5):
        part = slice(b * len(labels) // 5, (b + 1) * len(labels) // 5)
        batch = {b"batch_label": b"training batch", b"labels": labels[part], b"data": rows[part]}
        (out / f"data_batch_{b + 1}").write_bytes(py2_pickle(batch))
        written[f"data_batch_{b + 1}"] = (rows[part], labels[part])
    test_labels = [k % 10 for k in range(10 * per_class_test)]
    test_rows = cifar_images(len(test_labels), seed=2)
    (out / "test_batch").write_bytes(py2_pickle({b"labels": test_labels, b"data": test_rows}))
    written["test_batch"] = (test_rows, test_labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (out / "batches.meta").write_bytes(py2_pickle({b"label_names": names, b"num_vis": 3072}))
    return written


def write_cifar100(folder: Path, per_class_train: int, per_class_test: int) -> dict[str, tuple[np.ndarray, list]]:
    """`folder/cifar-100-python/` with train, test and meta (fine and coarse labels)."""
    out = folder / "cifar-100-python"
    out.mkdir(parents=True)
    written = {}
    for split, per_class, seed in (("train", per_class_train, 3), ("test", per_class_test, 4)):
        labels = [k % 100 for k in range(100 * per_class)]
        rows = cifar_images(len(labels), seed)
        batch = {b"fine_labels": labels, b"coarse_labels": [k // 5 for k in labels], b"data": rows}
        (out / split).write_bytes(py2_pickle(batch))
        written[split] = (rows, labels)
    names = [f"class_{k}".encode() for k in range(99)] + [b"aquarium_fish"]
    meta = {b"fine_label_names": names, b"coarse_label_names": [f"super_{k}".encode() for k in range(20)]}
    (out / "meta").write_bytes(py2_pickle(meta))
    return written


def pack(folder: Path, inner: str, archive: Path) -> Path:
    """`archive` (.tar.gz) holding `folder/inner/` as the official archives do."""
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(folder / inner, arcname=inner)
    return archive
