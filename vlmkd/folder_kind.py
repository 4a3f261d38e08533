"""What an output folder already holds, so that no stage replaces (or writes into) another stage's work.

`--overwrite` replaces a store *of its own kind* only, and a refusal says what the folder holds: a caption
store, a feature store, a training run, evaluation results, or files vlmkd did not write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vlmkd.bounded_read import read_json_file
from vlmkd.errors import InputError

CAPTIONS, FEATURES, RUN, EVAL, EMPTY, OTHER = "caption store", "feature store", "training run", "eval", "empty", "other"
_SHARD = re.compile(r"shard-\d{5}-of-\d{5}\.parquet")
_EPOCH = re.compile(r"epoch_\d{4,}")
_MANIFEST_FORMATS = {"vlmkd-captions": CAPTIONS, "vlmkd-features": FEATURES}
_RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "model.safetensors", "model.json"})
_EVAL_SUFFIXES = frozenset({".json", ".png", ".svg", ".html", ".csv", ".txt", ".npy", ".npz", ".safetensors"})


@dataclass(frozen=True)
class FolderKind:
    """The kind of a folder (one of the constants above) and a phrase for messages ("a caption store (...)")."""

    kind: str
    description: str


def folder_kind(path: Path) -> FolderKind:
    """Classify `path` by its entries (and the `format` of a `manifest.json`); never raises for a readable dir."""
    path = Path(path)
    if not path.exists():
        return FolderKind(EMPTY, "nothing")
    if not path.is_dir():
        return FolderKind(OTHER, "a file, not a folder")
    names = sorted(entry.name for entry in path.iterdir() if not _is_temporary(entry.name))
    if not names:
        return FolderKind(EMPTY, "an empty folder")
    if "manifest.json" in names:
        found = _manifest_format(path / "manifest.json")
        if found in _MANIFEST_FORMATS:
            kind = _MANIFEST_FORMATS[found]
            return FolderKind(kind, f"a {kind} ({found} manifest.json)")
        if any(_SHARD.fullmatch(name) for name in names):
            return FolderKind(CAPTIONS, "a caption store whose manifest.json is unreadable")
        if set(names) <= {"manifest.json", "features.npy", "progress.json"} and len(names) > 1:
            return FolderKind(FEATURES, "a feature store whose manifest.json is unreadable")
        what = f"format {found!r}" if found else "not a vlmkd store manifest"
        return FolderKind(OTHER, f"a manifest.json of something else ({what}) and {len(names)} entries")
    if any(_SHARD.fullmatch(name) for name in names):
        return FolderKind(CAPTIONS, "caption shards without a manifest.json")
    if set(names) <= {"features.npy", "progress.json"}:
        return FolderKind(FEATURES, "an unfinished feature store")
    epochs = [name for name in names if _EPOCH.fullmatch(name)]
    if epochs or _RUN_FILES & set(names):
        state = "a finished" if "model.safetensors" in names else "an unfinished"
        return FolderKind(RUN, f"{state} training run ({len(epochs)} checkpoint(s))")
    if "metrics.json" in names and all(
        (name == "features" and (path / name).is_dir()) or ((path / name).is_file() and Path(name).suffix in
                                                            _EVAL_SUFFIXES) for name in names
    ):  # fmt: skip
        return FolderKind(EVAL, "evaluation results (metrics.json)")
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return FolderKind(OTHER, f"{len(names)} entries vlmkd did not write ({shown})")


def refuse_unless(path: Path, allowed: set[str], *, stage: str, flag: str = "--out") -> FolderKind:
    """The kind of `path`; `InputError` saying what it holds unless that kind is in `allowed` (or empty)."""
    found = folder_kind(path)
    if found.kind != EMPTY and found.kind not in allowed:
        raise InputError(
            f"{path}: directory is not empty and is not a {stage}: it holds {found.description}; nothing was "
            f"changed there: choose another {flag}"
        )
    return found


def _manifest_format(file: Path) -> str | None:
    try:
        data = read_json_file(file, "manifest", max_bytes=1 << 20)
    except InputError:
        return None
    value = data.get("format") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _is_temporary(name: str) -> bool:
    """A write in flight or left by a kill (`.NAME.PID.tmp`, `.tmp_epoch_*`, a shard's `.lock`): not content."""
    return name.startswith(".") and (name.endswith((".tmp", ".lock")) or name.startswith(".tmp_"))
