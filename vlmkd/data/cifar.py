"""Read the python-pickle CIFAR-10 / CIFAR-100 archives from a local folder, with a restricted unpickler.

The official "python version" archives (`cifar-10-python.tar.gz` -> `cifar-10-batches-py/`,
`cifar-100-python.tar.gz` -> `cifar-100-python/`) store each split as a pickled dict of a uint8 array
(N x 3072, channel-major rows) and label lists. vlmkd never unpickles arbitrary data: these files go through
`CifarUnpickler`, which resolves only the globals a numpy array needs (numpy's `_reconstruct`, `ndarray`,
`dtype`, and `_codecs.encode` restricted to latin-1, which pickles of bytes written at protocol 2 use);
any other global (a function, a class, `os.system`...) is refused before it is called. Arrays of Python
objects are refused too, and every field is checked for its type and shape.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkd.errors import InputError

CIFAR_SIDE = 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its splits and class names."""

    name: str
    folder: str  # the folder the archive extracts to
    archive: str  # the official archive's file name
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "cifar10",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{k}" for k in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "label_names",
        "labels",
        10,
    ),
    "cifar100": CifarLayout(
        "cifar100",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        ("test",),
        "meta",
        "fine_label_names",
        "fine_labels",
        100,
    ),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes use it, and nothing else (no other codec)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers, numbers, strings and numpy arrays (see the module doc)."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR file")


def read_cifar_pickle(data: bytes, where: str) -> dict[str, object]:
    """The dict in one CIFAR pickle (keys as str); `InputError` naming `where` for anything else."""
    try:
        obj = CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise InputError(f"{where}: not a CIFAR python-pickle file ({error})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: not a CIFAR python-pickle file (expected a dict, got {type(obj).__name__})")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


@dataclass(frozen=True)
class CifarSplit:
    """One split: images (N, 32, 32, 3) uint8 in file order, labels (N,) int64, class names."""

    images: np.ndarray
    labels: np.ndarray
    classnames: tuple[str, ...]


class CifarSource:
    """A CIFAR variant found in a local folder: the extracted folder or the official .tar.gz."""

    def __init__(self, layout: CifarLayout, path: Path) -> None:
        self.layout = layout
        self.path = path  # the extracted folder, or the archive
        self._members: dict[str, bytes] | None = None

    @property
    def is_archive(self) -> bool:
        return self.path.is_file()

    def _read(self, file: str) -> bytes:
        if not self.is_archive:
            try:
                return (self.path / file).read_bytes()
            except OSError as error:
                raise InputError(f"{self.path / file}: cannot read ({error.strerror})") from None
        if self._members is None:
            self._members = self._read_archive()
        if file not in self._members:
            raise InputError(f"{self.path}: archive has no {self.layout.folder}/{file}")
        return self._members[file]

    def _read_archive(self) -> dict[str, bytes]:
        """Every file of the layout in one pass over the archive (members are read, never extracted)."""
        wanted = {f"{self.layout.folder}/{f}": f for f in (*self.layout.train_files, *self.layout.test_files)}
        wanted[f"{self.layout.folder}/{self.layout.meta_file}"] = self.layout.meta_file
        found: dict[str, bytes] = {}
        try:
            with tarfile.open(self.path, "r:*") as archive:
                for member in archive:
                    name = member.name.removeprefix("./")
                    if name in wanted and member.isfile():
                        handle = archive.extractfile(member)
                        if handle is not None:
                            found[wanted[name]] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise InputError(f"{self.path}: not a readable tar archive ({error})") from None
        return found

    def where(self, file: str) -> str:
        return f"{self.path}:{self.layout.folder}/{file}" if self.is_archive else str(self.path / file)

    def classnames(self) -> tuple[str, ...]:
        meta = read_cifar_pickle(self._read(self.layout.meta_file), self.where(self.layout.meta_file))
        names = meta.get(self.layout.names_key)
        if not isinstance(names, list) or len(names) != self.layout.num_classes:
            raise InputError(
                f"{self.where(self.layout.meta_file)}: expected {self.layout.num_classes} names under "
                f"{self.layout.names_key!r}"
            )
        return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)

    def split(self, train: bool) -> CifarSplit:
        """The training split (all batches, in file order) or the test split."""
        images, labels = [], []
        for file in self.layout.train_files if train else self.layout.test_files:
            batch = read_cifar_pickle(self._read(file), self.where(file))
            data, batch_labels = _checked_batch(batch, self.layout, self.where(file))
            images.append(data)
            labels.append(batch_labels)
        return CifarSplit(np.concatenate(images), np.concatenate(labels), self.classnames())


def _checked_batch(batch: dict[str, object], layout: CifarLayout, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get(layout.labels_key)
    side = CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side**2:
        shape = getattr(data, "shape", None)
        raise InputError(f"{where}: 'data' must be a uint8 array of shape (N, {3 * side**2}), got {shape}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise InputError(f"{where}: {layout.labels_key!r} must be a list of {len(data)} integer labels")
    labels_array = np.asarray(labels, dtype=np.int64)
    if labels_array.size and (labels_array.min() < 0 or labels_array.max() >= layout.num_classes):
        raise InputError(f"{where}: labels must lie in [0, {layout.num_classes})")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), labels_array


def find_cifar(source: Path, dataset: str | None = None) -> CifarSource:
    """The CIFAR variant at `source`: the extracted folder itself, a folder holding it or the archive, or the
    archive file. `dataset` ("cifar10"/"cifar100") picks one when both are there (default: the only one found)."""
    source = Path(source)
    if dataset is not None and dataset not in LAYOUTS:
        raise InputError(f"dataset must be one of {', '.join(LAYOUTS)}, got {dataset!r}")
    layouts = [LAYOUTS[dataset]] if dataset else list(LAYOUTS.values())
    if not source.exists():
        raise InputError(f"{source}: not found (expected a CIFAR folder or .tar.gz archive)")
    found = []
    for layout in layouts:
        if source.is_file():
            found += [CifarSource(layout, source)] if _archive_holds(source, layout) else []
        elif (source / layout.meta_file).is_file() and (source / layout.train_files[0]).is_file():
            found.append(CifarSource(layout, source))
        elif (source / layout.folder / layout.meta_file).is_file():
            found.append(CifarSource(layout, source / layout.folder))
        elif (source / layout.archive).is_file():
            found.append(CifarSource(layout, source / layout.archive))
    if not found:
        expected = " or ".join(f"{lay.folder}/ or {lay.archive}" for lay in layouts)
        raise InputError(f"{source}: no CIFAR data found (expected {expected})")
    if len(found) > 1:
        raise InputError(f"{source}: holds both CIFAR-10 and CIFAR-100; choose one with --dataset")
    return found[0]


def _archive_holds(archive: Path, layout: CifarLayout) -> bool:
    try:
        with tarfile.open(archive, "r:*") as handle:
            return any(m.name.removeprefix("./").startswith(layout.folder + "/") for m in handle)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise InputError(f"{archive}: not a readable tar archive ({error})") from None


def ldam_counts(max_count: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Images per class of the LDAM-DRW CIFAR-LT cut: int(n_max * (1 / IF) ** (i / (C - 1))), class 0 the head.

    The exact float expression of Cao et al.'s `IMBALANCECIFAR10.get_img_num_per_cls` (`imb_type='exp'`), so
    the counts (CIFAR-10-LT IF 100: 12,406 images; CIFAR-100-LT IF 100: 10,847) match theirs to the image.
    """
    if not imbalance_factor >= 1:
        raise InputError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    if num_classes < 2:
        raise InputError(f"a long tail needs at least 2 classes, got {num_classes}")
    ratio = 1.0 / imbalance_factor
    return [int(max_count * ratio ** (k / (num_classes - 1.0))) for k in range(num_classes)]


def ldam_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices LDAM-DRW keeps: per class in label order, shuffle the class's indices with numpy's legacy
    generator seeded once with `seed` (their `rand_number`, default 0) and keep the first `counts[k]`."""
    rng = np.random.RandomState(seed)
    kept = []
    for label, count in enumerate(counts):
        pool = np.flatnonzero(labels == label)
        if pool.size < count:
            raise InputError(f"class {label} has {pool.size} images, the long-tail profile needs {count}")
        rng.shuffle(pool)
        kept.append(pool[:count])
    return np.concatenate(kept)
