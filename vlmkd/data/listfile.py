"""Parse ImageNet-LT style list files: one `relative/path label` per line (also Places-LT, iNaturalist 2018)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from pathlib import Path

from vlmkd.atomic_files import write_text_atomic
from vlmkd.bounded_read import short_repr
from vlmkd.errors import InputError

# Labels index arrays sized by the largest label (class names, counts, classifier heads): bounded here, before
# anything is allocated from them. The largest long-tail benchmarks have ~10,000 classes.
MAX_CLASSES = 1_000_000
# Longer paths exist on no common file system (Linux: PATH_MAX 4096 bytes, NAME_MAX 255 bytes per component).
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_LINE_END = re.compile(r"\r\n|\r|\n")


def parse_list_line(line: str, where: str) -> tuple[str, int] | None:
    """One line -> (normalised relative path, label), None for blank and `#` comment lines.

    `where` is "file:line" for error messages. Paths must stay inside the dataset root.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise InputError(f"{where}: expected 'relative/path label', got {short_repr(text)}")
    raw_path, raw_label = parts
    try:
        label = int(raw_label)
    except ValueError:  # also for more than 4300 digits (Python's limit on parsing integers)
        raise InputError(f"{where}: label {short_repr(raw_label)} is not an integer") from None
    if label < 0:
        raise InputError(f"{where}: label {label} is negative")
    if label >= MAX_CLASSES:
        raise InputError(f"{where}: label {short_repr(label)} is beyond vlmkd's limit of {MAX_CLASSES:,} classes")
    return safe_relative_path(raw_path, where), label


def safe_relative_path(raw_path: str, where: str) -> str:
    """Normalise a dataset-relative path; reject absolute paths, paths that escape the root, and paths longer
    than file systems allow."""
    path = raw_path.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InputError(
            f"{where}: path {short_repr(raw_path)} is absolute; list files hold paths relative to the root"
        )
    normalised = posixpath.normpath(path)
    if normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise InputError(f"{where}: path {short_repr(raw_path)} escapes the dataset root")
    size = len(normalised.encode("utf-8", "surrogatepass"))
    longest = max(len(part.encode("utf-8", "surrogatepass")) for part in normalised.split("/"))
    if size > MAX_PATH_BYTES or longest > MAX_NAME_BYTES:
        raise InputError(
            f"{where}: path {short_repr(raw_path)} of {size:,} bytes (longest name {longest:,}) is longer than file "
            f"systems allow ({MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per name)"
        )
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
    for number, line in enumerate(lines_of(text), start=1):
        where = f"{path}:{number}"
        parsed = parse_list_line(line, where)
        if parsed is None:
            continue
        relative, label = parsed
        if num_classes is not None and label >= num_classes:
            raise InputError(f"{where}: label {label} is out of range [0, {num_classes})")
        if relative in first_line_of:
            raise InputError(
                f"{where}: duplicate entry {short_repr(relative)} (first on line {first_line_of[relative]})"
            )
        first_line_of[relative] = number
        entries.append((relative, label))
    if not entries:
        raise InputError(f"{path}: list file has no entries")
    return entries


def read_classnames(path: Path) -> list[str]:
    """Class names, one per line, in label order; blank lines are an error (they would shift labels)."""
    try:
        lines = lines_of(path.read_text(encoding="utf-8-sig"))
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
            raise InputError(
                f"{path}:{number}: duplicate class name {short_repr(name)} (first on line {first_line_of[name]})"
            )
        first_line_of[name] = number
    names = [line.strip() for line in lines]
    if not names:
        raise InputError(f"{path}: no class names")
    return names


def lines_of(text: str) -> list[str]:
    """The lines of a list or class-name file, split at line ends only (\\n, \\r\\n, \\r): `str.splitlines` would
    also split at U+2028, U+0085 and other separators that are valid in file names."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def write_list_file(path: Path, entries: Iterable[tuple[str, int]]) -> None:
    """Write `relative/path label` lines atomically (temporary file, then rename); paths are checked."""
    lines = []
    for number, (relative, label) in enumerate(entries, start=1):
        checked = safe_relative_path(relative, f"{path}: entry {number}")
        if checked != relative or any(char in relative for char in "\n\r") or relative != relative.strip():
            raise InputError(f"{path}: entry {number}: path {short_repr(relative)} cannot be written to a list file")
        if not 0 <= label < MAX_CLASSES:
            raise InputError(f"{path}: entry {number}: label {label} is outside [0, {MAX_CLASSES:,})")
        lines.append(f"{relative} {int(label)}\n")
    _write_text(path, "".join(lines))


def write_classnames(path: Path, names: Iterable[str]) -> None:
    """Write class names, one per line, atomically."""
    names = list(names)
    for number, name in enumerate(names, start=1):
        if not name.strip() or "\n" in name or "\r" in name:
            raise InputError(f"{path}: class {number - 1}: name {short_repr(name)} cannot be written one per line")
    _write_text(path, "".join(f"{name}\n" for name in names))


def _write_text(path: Path, text: str) -> None:
    """Create the parent directory and write `text` atomically (rename only: these files are not fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text, durable=False)
