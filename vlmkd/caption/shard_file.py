"""One caption shard's Parquet file: what it must hold, what made it, and the checks every reader makes.

A shard file holds the columns `image_index` (int64), `image_path`, `prompt_id` and `caption` (strings), and in
its Parquet metadata its shard number (`vlmkd.shard`), its unreadable or refused images (`vlmkd.failed`),
what made it (`vlmkd.made_by`: dataset, prompt set, engine, model and generation settings, sharding: the
store's settings) and, where a server answered as another model than asked for and `--served-model record` kept
its answers, the name it gave for each such caption (`vlmkd.served_as`). Readers check all of it from the
footer before reading a caption, and then read the strings as dictionaries so that their sizes are checked
before they are expanded:

- columns: an extra column is dropped, `large_string` (as polars writes it) and narrower integers are cast;
  a missing column or one of another type (a binary or integer caption) is refused naming the file;
- provenance: a `made_by` that disagrees with the store's manifest is refused (a caption rerun captions the
  shard again); shards written before vlmkd recorded it (no `made_by`) are read as before;
- sizes: every caption at most `MAX_CAPTION_CHARS` characters, paths and prompt ids as the dataset and prompt
  set allow, so a 6 KB shard cannot expand to gigabytes in every reader; no empty or whitespace caption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkd.bounded_read import short_repr
from vlmkd.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

FAILED_KEY = b"vlmkd.failed"
SERVED_AS_KEY = b"vlmkd.served_as"
SHARD_KEY = b"vlmkd.shard"
MADE_BY_KEY = b"vlmkd.made_by"
STRING_COLUMNS = ("image_path", "prompt_id", "caption")
COLUMNS = ("image_index", *STRING_COLUMNS)
# The longest caption a store holds, in characters: far beyond what captioning asks for (the text encoder
# reads 256 word pieces, about 1,000 characters), far below what a hostile server can send. Every engine's
# answers pass this rule before they are stored (`caption_problem`); longer ones are failures of their image.
MAX_CAPTION_CHARS = 8192
# Longest value of each string column, in UTF-8 bytes (4 per character at most).
MAX_VALUE_BYTES = {"image_path": 4096, "prompt_id": 64, "caption": 4 * MAX_CAPTION_CHARS}
_OFFSET_BYTES = 8  # per value and column in Parquet's and Arrow's layouts, at most
_FOOTER_SLACK = 1 << 20
# What the Parquet metadata may hold: the failures list names up to a shard of images with their reasons.
MAX_METADATA_BYTES = 64 << 20


def caption_problem(text: str) -> str | None:
    """Why `text` cannot be stored as a caption (empty, whitespace only, or too long), or None."""
    if not text.strip():
        return "empty answer" if not text else f"answer of whitespace only ({len(text)} characters)"
    if len(text) > MAX_CAPTION_CHARS:
        return f"answer of {len(text):,} characters, more than a caption may hold ({MAX_CAPTION_CHARS:,})"
    return None


def made_by(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What made a shard, from its store's manifest: every setting that changes the captions or the sharding
    (the prompt set by its fingerprint; `model_id`, a path that may move, is left out)."""
    prompt_set = manifest["prompt_set"]
    record = {
        "dataset_fingerprint": manifest["dataset_fingerprint"],
        "num_images": manifest["num_images"],
        "prompt_set": {"name": prompt_set.get("name"), "fingerprint": prompt_set.get("fingerprint")},
        "engine": manifest["engine"],
        "model_fingerprint": manifest["model_fingerprint"],
        "generation": manifest["generation"],
        "num_shards": manifest["num_shards"],
    }
    return json.loads(json.dumps(record))  # the form it has once read back


def metadata(
    shard: int,
    failed: list[list[Any]],
    maker: Mapping[str, Any],
    served_as: Mapping[str, list[list[Any]]] | None = None,
) -> dict[bytes, bytes]:
    """The Parquet metadata of a shard written now; `served_as` (model name the server gave -> [image_index,
    prompt_id] of each caption answered under it), only where a server answered as another model than asked for
    and the user kept its answers (`--served-model record`)."""
    found = {
        SHARD_KEY: str(shard).encode(),
        FAILED_KEY: json.dumps(failed).encode(),
        MADE_BY_KEY: json.dumps(maker, sort_keys=True).encode(),
    }
    if served_as:
        found[SERVED_AS_KEY] = json.dumps(served_as, sort_keys=True).encode()
    return found


def footer_problem(path: Path, shard: int, maker: Mapping[str, Any], footer: Any) -> str | None:
    """What is wrong with a shard file's footer (`pq.read_metadata`): another shard's file, another run's, a
    column missing or of a type vlmkd cannot read, or sizes beyond the caps; None if it can be read."""
    found = footer.metadata or {}
    recorded = found.get(SHARD_KEY)
    if recorded is None:
        return (
            "it lacks vlmkd's shard metadata (vlmkd.shard, vlmkd.failed): was it rewritten by another tool? Keep "
            "the Parquet key-value metadata when editing a shard"
        )
    if recorded != str(shard).encode():
        return f"the file holds shard {recorded.decode(errors='replace')[:20] if recorded else '?'}"
    if sum(len(key) + len(value) for key, value in found.items()) > MAX_METADATA_BYTES:
        return f"its Parquet metadata is larger than {MAX_METADATA_BYTES >> 20} MiB"
    if MADE_BY_KEY in found:
        try:
            recorded_maker = json.loads(found[MADE_BY_KEY])
        except ValueError:
            return "its vlmkd.made_by metadata is not JSON"
        differences = _differences(recorded_maker, maker)
        if differences:
            return f"it was made by another run than its store's manifest says ({'; '.join(differences[:3])})"
    schema = footer.schema.to_arrow_schema()
    problem = _schema_problem(schema)
    if problem:
        return problem
    return _size_problem(footer, schema)


def read(path: Path, footer: Any) -> pa.Table:
    """The four columns of a shard whose footer passed `footer_problem`, normalised to int64 and string;
    `ValueError` (pyarrow's `ArrowInvalid`) or `OSError` for a file damaged beyond its footer."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(COLUMNS), read_dictionary=list(STRING_COLUMNS))
    columns = {"image_index": table.column("image_index").cast(pa.int64())}
    for name in STRING_COLUMNS:
        column = table.column(name)
        longest = max((pc.max(pc.binary_length(chunk.dictionary)).as_py() or 0 for chunk in column.chunks), default=0)
        if longest > MAX_VALUE_BYTES[name]:
            raise InputError(f"{path}: a value of column {name} holds {longest:,} bytes, more than {_cap(name)}")
        columns[name] = column.cast(pa.string())
    captions = columns["caption"]
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(captions)), 0)
    if pc.any(empty).as_py():
        row = pc.index(empty, True).as_py()
        image, prompt = columns["image_index"][row].as_py(), columns["prompt_id"][row].as_py()
        raise InputError(
            f"{path}: image {image}, prompt {short_repr(prompt)} has an empty caption (written before vlmkd counted "
            "empty answers as failures); delete this shard file and rerun vlmkd-caption to caption it again"
        )
    return pa.table(columns)


def failures(footer: Any) -> list[tuple[int, str, str]]:
    """(image_index, image_path, reason) of the images a shard records as skipped."""
    failed = json.loads((footer.metadata or {}).get(FAILED_KEY, b"[]"))
    return [(int(i), str(p), str(r)) for i, p, r in failed]


def served_as(footer: Any) -> dict[str, list[tuple[int, str]]]:
    """What a shard records of captions whose server named another model than asked for: model name ->
    (image_index, prompt_id) of each such caption; empty for a shard whose answers all named the model."""
    recorded = json.loads((footer.metadata or {}).get(SERVED_AS_KEY, b"{}"))
    if not isinstance(recorded, dict):
        raise ValueError("vlmkd.served_as is not a mapping")
    return {str(name): [(int(i), str(p)) for i, p in captions] for name, captions in recorded.items()}


def _schema_problem(schema: pa.Schema) -> str | None:
    import pyarrow as pa

    for name in COLUMNS:
        if name not in schema.names:
            return f"it has no {name} column"
        kind = schema.field(name).type
        if name == "image_index":
            if not pa.types.is_integer(kind):
                return f"its image_index column is {kind}, not integers"
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return f"its {name} column is {kind}, not text"
    return None


def _size_problem(footer: Any, schema: pa.Schema) -> str | None:
    """Captions beyond the caps, from the column chunks' sizes: nothing is decompressed."""
    rows = footer.num_rows
    for name in STRING_COLUMNS:
        limit = rows * (MAX_VALUE_BYTES[name] + _OFFSET_BYTES) + _FOOTER_SLACK
        size = 0
        for group in range(footer.num_row_groups):
            row_group = footer.row_group(group)
            for index in range(row_group.num_columns):
                column = row_group.column(index)
                if column.path_in_schema == name:
                    size += column.total_uncompressed_size
        if size > limit:
            return f"its {name} column takes {size:,} bytes for {rows} rows, more than {_cap(name)} each allows"
    return None


def _differences(recorded: Any, expected: Mapping[str, Any]) -> list[str]:
    if not isinstance(recorded, dict):
        return ["vlmkd.made_by is not a mapping"]
    return [
        f"{name}: {short_repr(recorded.get(name))} in the shard, {short_repr(expected.get(name))} in the manifest"
        for name in sorted(set(recorded) | set(expected))
        if recorded.get(name) != expected.get(name)
    ]


def _cap(name: str) -> str:
    if name == "caption":
        return f"a caption's {MAX_CAPTION_CHARS:,} characters"
    return f"{MAX_VALUE_BYTES[name]:,} bytes"
