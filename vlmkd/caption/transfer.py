"""Bring-your-own captions: import rows from JSONL / CSV / Parquet into a caption store, and export one to JSONL.

An imported store is an ordinary caption store (same shards, manifest and atomic writes), so `vlmkd-encode`
and `vlmkd-train` read it unchanged. Its manifest says where the captions came from: engine `import`,
`model_id` the source path, `model_fingerprint` `sha256:<hex>` of the source file's bytes, and a `source`
record (path, sha256, format, rows). The prompt set is the one given (`prompts`: ids must match the file's,
its templates are recorded) or, without one, the prompt ids found in the file in order of first appearance,
named `imported`, with empty templates (what was asked is not known).

Rows: an image reference (`image_index`, 0-based in dataset order, and/or `image_path`, the dataset's own
relative path or the image's absolute path), `prompt_id` (or one `prompt_id` for every row), and `caption`
(or `text`), and optionally `served_as`: the model name a server gave for that caption instead of the one asked
for (what `export_captions` writes for captions kept with `--served-model record`; stored again in the shard's
metadata). Other columns are ignored. Every (image, prompt) pair of the dataset must appear exactly once;
anything else is an `InputError` naming the file, the line (row for Parquet) and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmkd.atomic_files import atomic_write
from vlmkd.bounded_read import short_repr
from vlmkd.caption.engines.base import MAX_SERVED_NAME_CHARS, ServedCaption
from vlmkd.caption.prompts import PromptSet, is_prompt_id, load_prompt_set
from vlmkd.caption.shard_file import MAX_CAPTION_CHARS, caption_problem
from vlmkd.caption.store import CaptionStore, Row, make_manifest, prompt_set_record
from vlmkd.data import ImageList
from vlmkd.errors import InputError
from vlmkd.folder_kind import refuse_file_unless
from vlmkd.output_lock import holding

ENGINE = "import"
IMPORTED_PROMPT_SET = "imported"  # name of the prompt set recorded when no `prompts` is given
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CAPTION_COLUMNS = ("caption", "text")
EXPORT_KEYS = ("image_index", "image_path", "prompt_id", "caption")
SERVED_AS_COLUMN = "served_as"  # exported only on captions a server answered as another model
DEFAULT_SHARD_SIZE = 256  # images per shard, as vlmkd-caption


@dataclass(frozen=True)
class ImportReport:
    """What `import_captions` did: the store, the rows read, and whether it was already imported."""

    store: CaptionStore
    source: Path
    sha256: str
    rows: int
    shards_written: int


def source_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_captions(
    source: str | Path,
    dataset: ImageList,
    out: str | Path,
    *,
    prompts: str | Path | PromptSet | None = None,
    prompt_id: str | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Check every row of `source` against `dataset` and write them into the caption store `out`.

    `prompts` (a prompt-set file, shipped name or `PromptSet`) fixes the prompt ids and records their
    templates; `prompt_id` gives the prompt of every row of a file without a `prompt_id` column. Nothing is
    written unless the whole file is valid. A store imported from the same bytes with the same settings is
    resumed (finished shards kept); one made otherwise is refused unless `overwrite`.
    """
    source, out = Path(source), Path(out)
    fmt = _format_of(source)
    if prompt_id is not None and not is_prompt_id(prompt_id):
        raise InputError(
            f"--prompt-id must be 1-64 characters of letters, digits, '_', '.', '-', got {short_repr(prompt_id)}"
        )
    prompt_set = prompts if isinstance(prompts, PromptSet) or prompts is None else load_prompt_set(prompts)
    sha256 = source_sha256(source)
    cells, order = _read_cells(source, fmt, dataset, prompt_set, prompt_id, progress)
    prompt_ids = prompt_set.ids if prompt_set is not None else tuple(order)
    _check_complete(source, dataset, prompt_ids, cells)
    record = prompt_set.record() if prompt_set is not None else prompt_set_record(
        IMPORTED_PROMPT_SET, dict.fromkeys(prompt_ids, "")
    )  # fmt: skip
    if num_shards is None:
        num_shards = _existing_num_shards(out) or -(-len(dataset) // DEFAULT_SHARD_SIZE)
    manifest = make_manifest(
        dataset_fingerprint=dataset.fingerprint(),
        num_images=len(dataset),
        prompt_set=record,
        engine=ENGINE,
        model_id=str(source),
        model_fingerprint=f"sha256:{sha256}",
        generation={"source_format": fmt},
        num_shards=num_shards,
    )
    manifest["source"] = {"path": str(source), "sha256": sha256, "format": fmt, "rows": len(cells)}
    with holding(out, what="caption store"):  # alone: no captioning process may share a store being replaced
        store = CaptionStore.create(out, manifest, overwrite=overwrite)
        todo = store.missing_shards()
        for shard in todo:
            rows: list[Row] = [
                (i, dataset.samples[i].path, p, cells[i, p]) for i in store.shard_range(shard) for p in prompt_ids
            ]
            store.write_shard(shard, rows)
    return ImportReport(store, source, sha256, len(cells), len(todo))


def export_captions(store: str | Path | CaptionStore, out: str | Path) -> int:
    """Write every row of a complete caption store to `out` as JSONL (UTF-8, atomically); returns the rows.

    One object per line with keys `image_index`, `image_path`, `prompt_id`, `caption` (and `served_as` on a
    caption whose server named another model, as `CaptionStore.served_as` records it), in (image, prompt) order,
    so `import_captions` of the file rebuilds the same rows, prompt order and served-as names.
    """
    store = store if isinstance(store, CaptionStore) else CaptionStore.open(Path(store))
    out = Path(out)
    refuse_file_unless(out, is_export, what="JSONL caption export")  # once it replaced STORE/manifest.json
    table = store.read_table()
    columns = [table.column(name).to_pylist() for name in EXPORT_KEYS]
    served = {caption: name for name, captions in store.served_as().items() for caption in captions}
    with atomic_write(out, ignore_dir_errors=True) as handle:
        for values in zip(*columns, strict=True):
            row = dict(zip(EXPORT_KEYS, values, strict=True))
            name = served.get((row["image_index"], row["prompt_id"]))
            line = json.dumps(row if name is None else row | {SERVED_AS_COLUMN: name}, ensure_ascii=False)
            handle.write(line.encode("utf-8") + b"\n")
    return table.num_rows


def is_export(head: bytes) -> bool:
    """Whether a file starting with `head` is an earlier `export_captions` output (or empty): its first line is
    an object with exactly the exported keys, in their order (`served_as` after them where recorded)."""
    if not head:
        return True
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and tuple(first) in (EXPORT_KEYS, (*EXPORT_KEYS, SERVED_AS_COLUMN))


# ------------------------------------------------------------------------------------------------ reading
def _format_of(source: Path) -> str:
    if not source.is_file():
        raise InputError(f"{source}: caption file not found")
    fmt = FORMATS.get(source.suffix.lower())
    if fmt is None:
        raise InputError(f"{source}: unknown caption file type {source.suffix!r} (use .jsonl, .csv or .parquet)")
    return fmt


def _records(source: Path, fmt: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, record) per row: `where` is `FILE:LINE` (JSONL, CSV) or `FILE: row N` (Parquet, 1-based)."""
    if fmt == "jsonl":
        yield from _jsonl_records(source)
    elif fmt == "csv":
        yield from _csv_records(source)
    else:
        yield from _parquet_records(source)


def _jsonl_records(source: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(source, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{source}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as error:
                raise InputError(
                    f"{where}: not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
            yield where, record


def _csv_records(source: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    data = source.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start - (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[: max(offset, 0)].count(b"\n") + 1
        raise InputError(f"{source}:{line}: not UTF-8 (byte {data[error.start]:#04x})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{source}: empty CSV file (expected a header row)")
        header = [name.strip() for name in header]
        start = reader.line_num + 1
        for cells in reader:
            where = f"{source}:{start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise InputError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            yield where, dict(zip(header, cells, strict=True))
    except csv.Error as error:
        raise InputError(f"{source}:{reader.line_num}: malformed CSV ({error})") from None


def _parquet_records(source: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: not a readable Parquet file ({' '.join(str(error).split())})") from None
    names = table.column_names
    try:
        columns = [table.column(name).to_pylist() for name in names]
    except UnicodeDecodeError as error:
        raise InputError(f"{source}: a string column is not UTF-8 ({error})") from None
    for number, values in enumerate(zip(*columns, strict=True), start=1):
        yield f"{source}: row {number}", dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------------------------- checking
class _RowChecker:
    """Turns one record into (image index, prompt id, caption), or raises naming where and what is wrong."""

    def __init__(self, dataset: ImageList, prompt_set: PromptSet | None, prompt_id: str | None, textual: bool):
        self.dataset = dataset
        self.allowed = set(prompt_set.ids) if prompt_set is not None else None
        self.prompt_set = prompt_set
        self.prompt_id = prompt_id
        self.textual = textual  # CSV: every cell is a string, so indices are parsed from text
        self.by_path = {sample.path: i for i, sample in enumerate(dataset.samples)}
        self.by_absolute: dict[str, int] | None = None  # built on first use

    def __call__(self, where: str, record: Mapping[str, Any]) -> tuple[int, str, str]:
        index = self._index(where, record)
        prompt = self._prompt(where, record)
        caption = self._caption(where, record)
        served_as = record.get(SERVED_AS_COLUMN)
        if served_as in (None, ""):
            return index, prompt, caption
        if not isinstance(served_as, str) or len(served_as) > MAX_SERVED_NAME_CHARS:
            raise InputError(f"{where}: {SERVED_AS_COLUMN} must be a model name of at most {MAX_SERVED_NAME_CHARS} "
                             f"characters, got {short_repr(served_as)}")  # fmt: skip
        return index, prompt, ServedCaption(caption, served_as)

    def _index(self, where: str, record: Mapping[str, Any]) -> int:
        has_index = record.get("image_index") not in (None, "")
        has_path = record.get("image_path") not in (None, "")
        if not has_index and not has_path:
            raise InputError(f"{where}: no image_index or image_path (one of them names the image)")
        from_index = self._parse_index(where, record["image_index"]) if has_index else None
        from_path = self._lookup_path(where, record["image_path"]) if has_path else None
        if from_index is not None and from_path is not None and from_index != from_path:
            raise InputError(
                f"{where}: image_index {from_index} is {self.dataset.samples[from_index].path!r} in "
                f"{self.dataset.source}, but image_path is {short_repr(record['image_path'])} (image {from_path})"
            )
        return from_index if from_index is not None else from_path  # type: ignore[return-value]

    def _parse_index(self, where: str, value: Any) -> int:
        if self.textual and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise InputError(f"{where}: image_index must be an integer, got {short_repr(value)}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(
                f"{where}: image_index must be an integer, got {short_repr(value)} ({type(value).__name__})"
            )
        if not 0 <= value < len(self.dataset):
            raise InputError(
                f"{where}: image_index {value} is out of range for {self.dataset.source} "
                f"({len(self.dataset)} images, indices 0..{len(self.dataset) - 1})"
            )
        return value

    def _lookup_path(self, where: str, value: Any) -> int:
        if not isinstance(value, str):
            raise InputError(f"{where}: image_path must be a string, got {short_repr(value)} ({type(value).__name__})")
        if value in self.by_path:
            return self.by_path[value]
        if self.by_absolute is None:
            self.by_absolute = {str(self.dataset.path(i).resolve()): i for i in range(len(self.dataset))}
        found = self.by_absolute.get(str(Path(value).resolve())) if Path(value).is_absolute() else None
        if found is None:
            raise InputError(f"{where}: image_path {short_repr(value)} is not an image of {self.dataset.source}")
        return found

    def _prompt(self, where: str, record: Mapping[str, Any]) -> str:
        value = record.get("prompt_id")
        if value in (None, ""):
            if self.prompt_id is None:
                raise InputError(f"{where}: no prompt_id (give the column, or --prompt-id for every row)")
            value = self.prompt_id
        if not isinstance(value, str):
            raise InputError(f"{where}: prompt_id must be a string, got {short_repr(value)} ({type(value).__name__})")
        if self.allowed is not None and value not in self.allowed:
            assert self.prompt_set is not None
            raise InputError(
                f"{where}: unknown prompt id {short_repr(value)} (prompt set {self.prompt_set.name} has "
                f"{', '.join(self.prompt_set.ids)})"
            )
        if not is_prompt_id(value):
            raise InputError(
                f"{where}: prompt_id must be 1-64 characters of letters, digits, '_', '.', '-', got {short_repr(value)}"
            )
        return value

    def _caption(self, where: str, record: Mapping[str, Any]) -> str:
        present = [name for name in CAPTION_COLUMNS if name in record]
        if len(present) != 1:
            found = "both caption and text" if present else "no caption (or text)"
            raise InputError(f"{where}: {found}; give exactly one caption column")
        value = record[present[0]]
        if not isinstance(value, str):
            raise InputError(
                f"{where}: {present[0]} must be a string, got {short_repr(value)} ({type(value).__name__})"
            )
        problem = caption_problem(value)
        if problem:
            raise InputError(f"{where}: {present[0]} is an {problem}; a caption store holds no empty captions and "
                             f"none over {MAX_CAPTION_CHARS:,} characters")  # fmt: skip
        return value


def _read_cells(
    source: Path,
    fmt: str,
    dataset: ImageList,
    prompt_set: PromptSet | None,
    prompt_id: str | None,
    progress: bool,
) -> tuple[dict[tuple[int, str], str], list[str]]:
    """Every (image, prompt) -> caption of the file, and the prompt ids in order of first appearance."""
    from tqdm import tqdm

    check = _RowChecker(dataset, prompt_set, prompt_id, textual=fmt == "csv")
    cells: dict[tuple[int, str], str] = {}
    first_seen: dict[tuple[int, str], str] = {}
    order: dict[str, None] = {}
    rows = tqdm(_records(source, fmt), unit="row", desc="import", disable=not progress, file=sys.stderr)
    for where, record in rows:
        index, prompt, caption = check(where, record)
        key = (index, prompt)
        if key in cells:
            raise InputError(
                f"{where}: duplicate caption for image {index} ({dataset.samples[index].path}), prompt {prompt} "
                f"(first given at {first_seen[key]})"
            )
        cells[key] = caption
        first_seen[key] = where
        order.setdefault(prompt)
    if not cells:
        raise InputError(f"{source}: no caption rows")
    return cells, list(order)


def _check_complete(
    source: Path, dataset: ImageList, prompt_ids: tuple[str, ...], cells: dict[tuple[int, str], str]
) -> None:
    """InputError naming the first (image, prompt) without a row, in (image, prompt) order."""
    expected = len(dataset) * len(prompt_ids)
    if len(cells) == expected:
        return
    for i in range(len(dataset)):
        for p in prompt_ids:
            if (i, p) not in cells:
                more = expected - len(cells) - 1
                tail = f" (and {more} more missing)" if more else ""
                raise InputError(
                    f"{source}: no caption for image {i} ({dataset.samples[i].path}), prompt {p}{tail}; every "
                    f"image of {dataset.source} needs exactly one row per prompt ({', '.join(prompt_ids)})"
                )


def _existing_num_shards(out: Path) -> int | None:
    try:
        return CaptionStore.open(out).num_shards
    except InputError:
        return None
