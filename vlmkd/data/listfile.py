"""Parse ImageNet-LT style list files: one `relative/path label` per line (also Places-LT, iNaturalist 2018)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import Path

from vlmkd.atomic_files import write_text_atomic
from vlmkd.errors import InputError


def parse_list_line(line: str, where: str) -> tuple[str, int] | None:
    """One line -> (normalised relative path, label), None for blank and `#` comment lines.

    `where` is "file:line" for error messages. Paths must stay inside the dataset root.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise InputError(f"{where}: expected 'relative/path label', got {text!r}")
    raw_path, raw_label = parts
    try:
        label = int(raw_label)
    except ValueError:
        raise InputError(f"{where}: label {raw_label!r} is not an integer") from None
    if label < 0:
        raise InputError(f"{where}: label {label} is negative")
    return safe_relative_path(raw_path, where), label


def safe_relative_path(raw_path: str, where: str) -> str:
    """Normalise a dataset-relative path; reject absolute paths and paths that escape the root."""
    path = raw_path.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InputError(f"{where}: path {raw_path!r} is absolute; list files hold paths relative to the root")
    normalised = posixpath.normpath(path)
    if normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise InputError(f"{where}: path {raw_path!r} escapes the dataset root")
    return normalised


def read_list_file(path: Path, num_classes: int | None = None) -> list[tuple[str, int]]:
    """All (relative path, label) entries of a list file, checked: no duplicates, labels < num_classes."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of a path
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a UTF-8 text list file ({error.reason})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read list file ({error.strerror})") from None
    entries: list[tuple[str, int]] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        parsed = parse_list_line(line, where)
        if parsed is None:
            continue
        relative, label = parsed
        if num_classes is not None and label >= num_classes:
            raise InputError(f"{where}: label {label} is out of range [0, {num_classes})")
        if relative in first_line_of:
            raise InputError(f"{where}: duplicate entry {relative!r} (first on line {first_line_of[relative]})")
        first_line_of[relative] = number
        entries.append((relative, label))
    if not entries:
        raise InputError(f"{path}: list file has no entries")
    return entries


def read_classnames(path: Path) -> list[str]:
    """Class names, one per line, in label order; blank lines are an error (they would shift labels)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a UTF-8 text class-name file ({error.reason})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read class names ({error.strerror})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise InputError(f"{path}:{number}: empty class name")
        if name in first_line_of:  # two labels with one name: prompts and reports would mix them up
            raise InputError(f"{path}:{number}: duplicate class name {name!r} (first on line {first_line_of[name]})")
        first_line_of[name] = number
    names = [line.strip() for line in lines]
    if not names:
        raise InputError(f"{path}: no class names")
    return names


def write_list_file(path: Path, entries: Iterable[tuple[str, int]]) -> None:
    """Write `relative/path label` lines atomically (temporary file, then rename); paths are checked."""
    lines = []
    for number, (relative, label) in enumerate(entries, start=1):
        checked = safe_relative_path(relative, f"{path}: entry {number}")
        if checked != relative or any(char in relative for char in "\n\r") or relative != relative.strip():
            raise InputError(f"{path}: entry {number}: path {relative!r} cannot be written to a list file")
        if label < 0:
            raise InputError(f"{path}: entry {number}: label {label} is negative")
        lines.append(f"{relative} {int(label)}\n")
    _write_text(path, "".join(lines))


def write_classnames(path: Path, names: Iterable[str]) -> None:
    """Write class names, one per line, atomically."""
    names = list(names)
    for number, name in enumerate(names, start=1):
        if not name.strip() or "\n" in name or "\r" in name:
            raise InputError(f"{path}: class {number - 1}: name {name!r} cannot be written one per line")
    _write_text(path, "".join(f"{name}\n" for name in names))


def _write_text(path: Path, text: str) -> None:
    """Create the parent directory and write `text` atomically (rename only: these files are not fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text, durable=False)
