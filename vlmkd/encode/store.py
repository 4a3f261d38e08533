"""The feature store: one fp16 array (images x prompts x dim) as a memory-mapped `.npy`, plus a JSON manifest.

Layout of a store directory:
    manifest.json   written last and atomically: its presence is what makes the store complete
    features.npy    float16, shape (num_images, num_prompts, dim), row i = dataset index i
    progress.json   only while encoding (see `vlmkd.encode.writer`): finished chunks, for resuming
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmkd.bounded_read import read_json_file
from vlmkd.errors import InputError, StoreMismatchError

if TYPE_CHECKING:
    from vlmkd.caption.store import CaptionStore
    from vlmkd.data.dataset import ImageList

FORMAT = "vlmkd-features"
VERSION = 1
MANIFEST_FILE = "manifest.json"
FEATURES_FILE = "features.npy"
PROGRESS_FILE = "progress.json"

# Manifest keys every reader may rely on, with their JSON types.
MANIFEST_KEYS: dict[str, type] = {
    "format": str,
    "version": int,
    "encoder": str,
    "encoder_dtype": str,
    "dim": int,
    "normalized": bool,
    "dtype": str,
    "prompt_ids": list,
    "num_images": int,
    "dataset_fingerprint": str,
    "caption_store_fingerprint": str,
}


@dataclass(frozen=True)
class FeatureStore:
    """A complete feature store opened read-only; `features[i, p]` is image i's caption for prompt p."""

    path: Path
    manifest: dict[str, Any]
    features: np.ndarray  # read-only memmap, float16 (num_images, num_prompts, dim)

    @classmethod
    def open(cls, path: Path | str) -> FeatureStore:
        """Open the store at `path`; InputError if it is missing, unfinished or corrupt."""
        path = Path(path)
        manifest_file = path / MANIFEST_FILE
        if not manifest_file.exists():
            if (path / PROGRESS_FILE).exists():
                progress = Progress.load(path / PROGRESS_FILE)
                raise InputError(
                    f"{path}: unfinished feature store ({len(progress.done)}/{progress.num_chunks} chunks "
                    "encoded); rerun vlmkd-encode with the same arguments to finish it"
                )
            what = "directory has no manifest.json" if path.is_dir() else "not found"
            raise InputError(f"{path}: not a feature store ({what})")
        manifest = read_json(manifest_file)
        validate_manifest(manifest, manifest_file)
        expected = (manifest["num_images"], len(manifest["prompt_ids"]), manifest["dim"])
        try:
            features = np.load(path / FEATURES_FILE, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise InputError(f"{path / FEATURES_FILE}: unreadable feature array ({error})") from None
        if features.shape != expected or features.dtype != np.float16:
            raise InputError(
                f"{path / FEATURES_FILE}: expected float16 {expected} from the manifest, "
                f"got {features.dtype} {features.shape}"
            )
        return cls(path=path, manifest=manifest, features=features)

    def __reduce__(self) -> tuple:
        # Pickled (e.g. into DataLoader workers) as its path: each process maps the file, nothing is copied.
        return (type(self).open, (self.path,))

    @property
    def prompt_ids(self) -> tuple[str, ...]:
        return tuple(self.manifest["prompt_ids"])

    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def fingerprint(self) -> str:
        """Identity of the features: a hash of the manifest (encoder, settings and caption-store fingerprint)."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]

    def check_dataset(self, dataset: ImageList) -> None:
        """Refuse a dataset other than the one the captions (and so these features) were made from."""
        expected = self.manifest["dataset_fingerprint"]
        actual = dataset.fingerprint()
        if actual != expected or len(dataset) != self.num_images:
            raise StoreMismatchError(
                f"{self.path}: features were encoded for dataset {expected} ({self.num_images} images), but "
                f"{dataset.source} is dataset {actual} ({len(dataset)} images); caption and encode this dataset"
            )

    def check_captions(self, captions: CaptionStore) -> None:
        """Refuse a caption store other than the one these features were encoded from."""
        expected = self.manifest["caption_store_fingerprint"]
        actual = captions.fingerprint()
        if actual != expected:
            raise StoreMismatchError(
                f"{self.path}: features were encoded from caption store {expected}, but {captions.path} is "
                f"caption store {actual}; rerun vlmkd-encode on it"
            )


@dataclass(frozen=True)
class Progress:
    """An unfinished store: the manifest it will get, its chunk size (images) and the chunks already written."""

    manifest: dict[str, Any]
    chunk_size: int
    done: frozenset[int]

    @property
    def num_chunks(self) -> int:
        return -(-self.manifest["num_images"] // self.chunk_size)

    def chunk_rows(self, chunk: int) -> range:
        """The image indices of `chunk`."""
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.manifest["num_images"]))

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "chunk_size": self.chunk_size, "done": sorted(self.done)}

    @classmethod
    def load(cls, file: Path) -> Progress:
        data = read_json(file)
        try:
            validate_manifest(data["manifest"], file)
            chunk_size, done = data["chunk_size"], frozenset(data["done"])
        except (KeyError, TypeError) as error:
            raise InputError(f"{file}: corrupt progress file ({error!r}); delete the store and rerun") from None
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"{file}: corrupt progress file (chunk_size {chunk_size!r})")
        return cls(manifest=data["manifest"], chunk_size=chunk_size, done=done)


def validate_manifest(manifest: Any, source: Path) -> None:
    """InputError naming `source` unless `manifest` is a feature-store manifest this version can read."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{source}: not a vlmkd feature-store manifest")
    if manifest.get("version") != VERSION:
        raise InputError(f"{source}: feature-store version {manifest.get('version')!r}, this vlmkd reads {VERSION}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"{source}: manifest field {key!r} is missing or not of type {kind.__name__}")
    if manifest["dtype"] != "float16":
        raise InputError(f"{source}: feature dtype {manifest['dtype']!r}, expected 'float16'")


def read_json(file: Path) -> Any:
    """Parsed JSON of `file`; InputError naming it if unreadable."""
    try:
        return read_json_file(file, "feature-store JSON")
    except InputError as error:
        detail = str(error).removeprefix(str(file)).lstrip(":0123456789 ")
        raise InputError(f"{file}: unreadable JSON ({detail})") from None
