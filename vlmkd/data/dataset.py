"""A labelled image dataset on disk: a list file or an ImageFolder directory, with class names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkd.data.images import IMAGE_EXTENSIONS
from vlmkd.data.listfile import read_classnames, read_list_file
from vlmkd.errors import InputError

CLASSNAMES_FILE = "classnames.txt"


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root (POSIX form) and its label."""

    path: str
    label: int


@dataclass(frozen=True)
class ImageList:
    """The images of one split, their labels and the class names; every stage reads datasets through it."""

    root: Path
    samples: tuple[Sample, ...]
    classnames: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def path(self, index: int) -> Path:
        """Absolute path of image `index`."""
        return self.root / self.samples[index].path

    def labels(self) -> np.ndarray:
        """Labels as an int64 array in dataset order."""
        return np.fromiter((sample.label for sample in self.samples), dtype=np.int64, count=len(self.samples))

    def class_counts(self) -> np.ndarray:
        """Images per class (length `num_classes`)."""
        return np.bincount(self.labels(), minlength=self.num_classes)

    def fingerprint(self) -> str:
        """Identity of the split: a hash of its (path, label) entries and class names, not of the root.

        Stores record it so that captions and features are never paired with another dataset.
        """
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(f"{sample.path}\t{sample.label}\n".encode())
        digest.update("\x00".join(self.classnames).encode())
        return digest.hexdigest()[:16]


def load_image_list(spec: str | Path, root: Path | None = None, classnames: Path | None = None) -> ImageList:
    """Load a dataset from a list file (`relative/path label` per line) or an ImageFolder directory.

    For a list file the root defaults to the file's directory and the class names to `classnames.txt`
    beside it (else `class_0`, `class_1`, ...). For a directory, each subdirectory is a class, in sorted order.
    """
    spec = Path(spec)
    if spec.is_dir():
        if root is not None and root != spec:
            raise InputError(f"{spec}: an ImageFolder directory is its own root; do not pass a different root")
        return _load_image_folder(spec, classnames)
    if not spec.exists():
        raise InputError(f"{spec}: dataset not found (expected a list file or an ImageFolder directory)")
    root = spec.parent if root is None else root
    names_file = classnames if classnames is not None else spec.parent / CLASSNAMES_FILE
    names = read_classnames(names_file) if names_file.exists() else None
    if classnames is not None and names is None:
        raise InputError(f"{classnames}: class-name file not found")
    entries = read_list_file(spec, num_classes=None if names is None else len(names))
    if names is None:
        names = [f"class_{k}" for k in range(max(label for _, label in entries) + 1)]
    samples = tuple(Sample(path, label) for path, label in entries)
    return ImageList(root=root, samples=samples, classnames=tuple(names), source=spec)


def _load_image_folder(directory: Path, classnames: Path | None) -> ImageList:
    """Each visible subdirectory is a class, in sorted order. Hidden entries (names starting with a dot) are
    not data: Jupyter's `.ipynb_checkpoints/` (empty, or holding copies of images) once became class 0 and
    shifted every label, and macOS writes `._NAME.jpg` resource files beside images."""
    class_dirs = sorted(entry for entry in directory.iterdir() if entry.is_dir() and not _hidden(entry.name))
    if not class_dirs:
        raise InputError(
            f"{directory}: ImageFolder directory has no class subdirectories (hidden ones such as "
            ".ipynb_checkpoints are not classes)"
        )
    samples = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.rglob("*")):
            relative = file.relative_to(directory)
            if any(_hidden(part) for part in relative.parts) or file.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if file.is_file():
                samples.append(Sample(relative.as_posix(), label))
    if not samples:
        raise InputError(f"{directory}: no image files under its class subdirectories")
    names = [d.name for d in class_dirs]
    if classnames is not None:
        given = read_classnames(classnames)
        if len(given) != len(names):
            raise InputError(f"{classnames}: {len(given)} class names for {len(names)} class folders in {directory}")
        names = given
    return ImageList(root=directory, samples=tuple(samples), classnames=tuple(names), source=directory)


def _hidden(name: str) -> bool:
    return name.startswith(".")
