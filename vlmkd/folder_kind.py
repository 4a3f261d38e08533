"""What an output already holds, so that no command replaces, deletes or writes into what it did not make.

Every writer checks its output through the one helper here before it writes: `refuse_unless` for a folder
(a store, a run, evaluation results, a dataset, a model, a folder of plots), `refuse_file_unless` for a file
(an export, a gallery page). An output is written only where nothing stands, or where the writer's own kind of
output stands (which it may resume or, where it says so, replace: `--overwrite` replaces a store *of its own
kind* only); nothing is ever written inside a store, evaluation results or a model. A refusal says what the
output holds: a caption store, a feature store, a training run, evaluation results, a dataset or a model
vlmkd made, or files vlmkd did not write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmkd.bounded_read import read_json_file, short_repr
from vlmkd.errors import InputError

CAPTIONS, FEATURES, RUN, EVAL, EMPTY, OTHER = "caption store", "feature store", "training run", "eval", "empty", "other"
DATASET, MODEL = "dataset", "model"
_SHARD = re.compile(r"shard-\d{5}-of-\d{5}\.parquet")
_EPOCH = re.compile(r"epoch_\d{4,}")
_MANIFEST_FORMATS = {"vlmkd-captions": CAPTIONS, "vlmkd-features": FEATURES}
# Files only a training run writes (`model.safetensors` alone is not one: every Hugging Face model has it).
_RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "model.json"})
_EVAL_SUFFIXES = frozenset({".json", ".png", ".svg", ".html", ".csv", ".txt", ".npy", ".npz", ".safetensors"})
# What the dataset writers leave beside their list files: `vlmkd data make-demo`, the recipes, `longtail`.
DEMO_RECORD, RECIPE_RECORD, LONGTAIL_RECORD = "demo.json", "recipe.json", "longtail.json"
DATASET_MARKERS = (DEMO_RECORD, RECIPE_RECORD, LONGTAIL_RECORD)
# `vlmkd models make-tiny` writes this model card; its first line and command name mark the folder as its own.
TINY_MODEL_CARD = "README.md"
TINY_MODEL_TITLE = "# Tiny random "
TINY_MODEL_COMMAND = "vlmkd models make-tiny"
_HEAD_BYTES = 4096


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
    names = entries(path)
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
    markers = [name for name in DATASET_MARKERS if name in names]
    if markers:
        return FolderKind(DATASET, f"a dataset vlmkd made ({markers[0]})")
    if TINY_MODEL_CARD in names and _is_tiny_model(path):
        return FolderKind(MODEL, f"a tiny model made by {TINY_MODEL_COMMAND}")
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


def entries(folder: Path) -> list[str]:
    """The names in `folder` that are content, sorted: writes in flight and locks (`.NAME.PID.tmp`, `.lock`) not."""
    return sorted(entry.name for entry in Path(folder).iterdir() if not _is_temporary(entry.name))


def refuse_unless(
    path: Path,
    allowed: set[str],
    *,
    stage: str,
    flag: str = "--out",
    own: Callable[[Path], bool] | None = None,
) -> FolderKind:
    """The kind of the output folder `path`; `InputError` saying what it holds unless it is empty, of a kind in
    `allowed`, or recognised by `own` (the writer's test for its own output, for kinds this module does not
    name), and never inside a store, evaluation results or a model."""
    path = Path(path)
    _refuse_inside_sealed(path, stage, flag)
    found = folder_kind(path)
    if found.kind == EMPTY or found.kind in allowed or (own is not None and path.is_dir() and own(path)):
        return found
    raise InputError(
        f"{path}: directory is not empty and is not a {stage}: it holds {found.description}; nothing was "
        f"changed there (even --overwrite replaces only a {stage}): choose another {flag}"
    )


def reuse_recorded(
    out_dir: Path,
    record: str,
    settings: dict,
    *,
    stage: str,
    what: str,
    holds: str = "",
    recorded_keys: bool = False,
) -> bool:
    """True if `out_dir` already holds what `settings` make (its `record` file, `what`, says so); False if it is
    empty or absent; `InputError` if it holds anything else. With `recorded_keys`, only the keys of `settings`
    are compared (a record may carry more); `holds` opens the description of what stands there."""
    manifest = out_dir / record
    refuse_unless(out_dir, set(), stage=stage, flag="OUT", own=lambda folder: manifest.is_file())
    if not manifest.is_file():
        return False
    found = read_json_file(manifest, what)
    if recorded_keys and isinstance(found, dict):
        found = {k: v for k, v in found.items() if k in settings}
    if found != settings:
        raise InputError(
            f"{out_dir}: holds {holds}{short_repr(found)}, not {settings}; delete it or choose another directory"
        )
    return True


def refuse_file_unless(path: Path, own: Callable[[bytes], bool], *, what: str, flag: str = "--out") -> None:
    """`InputError` unless the output file `path` is new or holds `what` already (`own` tests the file's first
    4 KiB), and its folder is not a store, evaluation results or a model."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the {what} ({flag})")
    _refuse_inside_sealed(path, what, flag)
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as error:
        raise InputError(f"{path}: exists and cannot be read ({error.strerror}); choose another {flag}") from None
    if not path.is_file() or not own(head):
        raise InputError(
            f"{path}: exists and is not a {what} vlmkd wrote; nothing was changed there: choose another {flag} "
            "(or move the file away)"
        )


def _refuse_inside_sealed(path: Path, what: str, flag: str) -> None:
    """`InputError` if `path`'s folder is a store, evaluation results or a model (read from marker files only,
    never by listing: a dataset root may hold a million files)."""
    parent = path.absolute().parent
    kind = _sealed_kind(parent)
    if kind is not None:
        raise InputError(
            f"{path}: is inside {kind}; vlmkd writes nothing into it (a {what} there would be lost when it is "
            f"replaced, or would change what it is): choose another {flag}"
        )


def _sealed_kind(folder: Path) -> str | None:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        found = _manifest_format(manifest)
        if found in _MANIFEST_FORMATS:
            return f"a {_MANIFEST_FORMATS[found]} ({folder})"
    if (folder / "metrics.json").is_file() and folder_kind(folder).kind == EVAL:
        return f"evaluation results ({folder})"
    if (folder / TINY_MODEL_CARD).is_file() and _is_tiny_model(folder):
        return f"a tiny model made by {TINY_MODEL_COMMAND} ({folder})"
    return None


def _is_tiny_model(folder: Path) -> bool:
    try:
        with open(folder / TINY_MODEL_CARD, "rb") as handle:
            head = handle.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.startswith(TINY_MODEL_TITLE) and TINY_MODEL_COMMAND in head


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
