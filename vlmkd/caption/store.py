"""The caption store: one directory of Parquet shards plus a JSON manifest that says how they were made.

Layout::

    STORE/manifest.json                      settings and identity (written once, atomically)
    STORE/shard-00000-of-00004.parquet       rows (image_index, image_path, prompt_id, caption)
    ...

Shard `k` holds a contiguous block of images (`CaptionStore.shard_range(k)`), every prompt per image, in
(image, prompt) order. A shard file exists only once it is complete: it is written to a temporary file,
fsynced and renamed. Images that could not be read are listed in the shard's Parquet metadata
(`vlmkd.failed`) so later stages can name them, beside what made the shard (`vlmkd.made_by`); readers check
both, and the columns and sizes, before reading captions (`vlmkd.caption.shard_file`). A rerun with the same
settings keeps finished shards; a store made with other settings is refused unless the caller asks for it to
be replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkd.atomic_files import atomic_write, remove_stale_temporaries, write_json_atomic
from vlmkd.bounded_read import read_json_file
from vlmkd.caption import shard_file, shard_locks
from vlmkd.caption.engines.base import ServedCaption
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.folder_kind import CAPTIONS, refuse_unless

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlmkd.data import ImageList

FORMAT = "vlmkd-captions"
VERSION = 1
MANIFEST_NAME = "manifest.json"
_SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.parquet")
_TMP_RE = re.compile(r"\.shard-\d{5}-of-\d{5}\.parquet\.\d+\.tmp")  # atomic_files.temporary_path
_LOCK_RE = re.compile(r"\.shard-\d{5}-of-\d{5}\.parquet\.lock")  # shard_locks.lock_path

# The manifest fields that must agree for two runs to write into the same store.
# `model_id` (the name or path given) is shown, not compared: a model directory may move between runs.
SETTINGS_FIELDS = ("format", "version", "dataset_fingerprint", "num_images", "prompt_set", "engine",
                   "model_fingerprint", "generation", "num_shards")  # fmt: skip
# The fields that define what the captions are (sharding excluded): `CaptionStore.fingerprint()` hashes them.
IDENTITY_FIELDS = ("dataset_fingerprint", "num_images", "prompt_set", "engine", "model_fingerprint", "generation")

Row = tuple[int, str, str, str]  # (image_index, image_path, prompt_id, caption)
Failure = tuple[int, str, str]  # (image_index, image_path, reason)


def prompt_set_record(name: str, prompts: Mapping[str, str]) -> dict[str, Any]:
    """Manifest record of a prompt set: its name, a fingerprint of its ids and templates, and the prompts."""
    items = [{"id": prompt_id, "template": template} for prompt_id, template in prompts.items()]
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": name, "fingerprint": digest, "prompts": items}


def make_manifest(
    *,
    dataset_fingerprint: str,
    num_images: int,
    prompt_set: Mapping[str, Any],
    engine: str,
    model_id: str,
    model_fingerprint: str | None = None,
    generation: Mapping[str, Any] | None = None,
    num_shards: int = 1,
) -> dict[str, Any]:
    """A manifest dict; `prompt_set` comes from `prompt_set_record`. Deterministic: no dates, no hosts."""
    if num_images < 1:
        raise InputError(f"a caption store needs at least one image, got {num_images}")
    if not 1 <= num_shards <= num_images:
        raise InputError(f"num_shards must be in [1, {num_images}] for {num_images} images, got {num_shards}")
    if not prompt_set.get("prompts"):
        raise InputError("a caption store needs at least one prompt")
    return {
        "format": FORMAT,
        "version": VERSION,
        "dataset_fingerprint": dataset_fingerprint,
        "num_images": int(num_images),
        "prompt_set": dict(prompt_set),
        "engine": engine,
        "model_id": model_id,
        "model_fingerprint": model_fingerprint if model_fingerprint is not None else model_id,
        "generation": dict(generation or {}),
        "num_shards": int(num_shards),
    }


class CaptionStore:
    """A caption store on disk. `open` an existing one; `create` one (or resume it) to write shards."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.prompt_ids: tuple[str, ...] = tuple(p["id"] for p in manifest["prompt_set"]["prompts"])

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: Path) -> CaptionStore:
        """Open an existing store; `InputError` naming the path if it is not one."""
        path = Path(path)
        manifest_file = path / MANIFEST_NAME
        if not manifest_file.is_file():
            raise InputError(f"{path}: not a caption store (no {MANIFEST_NAME})")
        try:
            manifest = read_json_file(manifest_file, "caption-store manifest")
        except InputError as error:
            detail = str(error).removeprefix(str(manifest_file)).lstrip(":0123456789 ")
            raise InputError(f"{manifest_file}: unreadable caption-store manifest ({detail})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{manifest_file}: not a caption-store manifest (format is not {FORMAT!r})")
        if manifest.get("version") != VERSION:
            raise InputError(f"{manifest_file}: caption-store version {manifest.get('version')} is not {VERSION}")
        problem = _manifest_problem(manifest)
        if problem:
            raise InputError(f"{manifest_file}: damaged caption-store manifest: {problem}")
        return cls(path, manifest)

    @classmethod
    def check_compatible(
        cls, path: Path, manifest: Mapping[str, Any], *, overwrite: bool = False, existing: CaptionStore | None = None
    ) -> bool:
        """Whether `path` holds a store with `manifest`'s settings (so a run resumes it); False when there is
        none or `overwrite` will replace it. Raises what `create` would, without touching anything: a
        caller can check before loading a model for minutes. `existing`: the store at `path`, already open.
        """
        path = Path(path)
        manifest = json.loads(json.dumps(manifest))  # the form it takes on disk: lists, str keys
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: exists and is not a directory; choose another --out")
        # Only a caption store is ever resumed or (with --overwrite) replaced: never a feature store or a run.
        found = refuse_unless(path, {CAPTIONS}, stage="caption store")
        if not (path / MANIFEST_NAME).exists():
            if found.kind == CAPTIONS and not overwrite:
                raise InputError(
                    f"{path}: holds {found.description}; pass --overwrite to replace them or choose another --out"
                )
            return False
        try:
            existing = existing if existing is not None else cls.open(path)
        except InputError:
            if overwrite:
                return False
            raise
        differences = settings_differences(existing.manifest, manifest)
        if differences and not overwrite:
            raise StoreMismatchError(
                f"{path}: caption store was made with other settings ({'; '.join(differences)}); "
                "pass --overwrite to replace it or choose another --out"
            )
        return not differences

    @classmethod
    def create(
        cls, path: Path, manifest: Mapping[str, Any], *, overwrite: bool = False, existing: CaptionStore | None = None
    ) -> CaptionStore:
        """Create a store at `path` with `manifest` (from `make_manifest`), or reopen it to resume.

        An existing store with the same settings is returned as is: its finished shards are kept. One made
        with other settings (or with an unreadable manifest) raises `StoreMismatchError` (`InputError`)
        unless `overwrite`, which deletes its manifest and shards (nothing else) first. Safe to call from
        several processes at once. `existing`: the store at `path`, already open (it is not reopened).
        """
        path = Path(path)
        manifest = json.loads(json.dumps(manifest))
        if cls.check_compatible(path, manifest, overwrite=overwrite, existing=existing):
            store = existing if existing is not None else cls.open(path)
            store._sweep_temporaries_of_finished_shards()
            return store
        if overwrite and path.is_dir():  # replace the old store: its shards and manifest, nothing else
            _delete_store_files(path)
        path.mkdir(parents=True, exist_ok=True)
        _publish_json(path / MANIFEST_NAME, manifest)
        store = cls.open(path)
        differences = settings_differences(store.manifest, manifest)
        if differences:  # another process created it first, with other settings
            raise StoreMismatchError(f"{path}: another run created this store with other settings: {differences}")
        return store

    def delete_files(self) -> None:
        """Remove this store's manifest, shards and leftover temporary files (and nothing else)."""
        _delete_store_files(self.path)

    # ---------------------------------------------------------------------------------------- identity
    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def made_by(self) -> dict[str, Any]:
        """What every shard of this store records as having made it (`shard_file.made_by`)."""
        return shard_file.made_by(self.manifest)

    def fingerprint(self) -> str:
        """Identity of what the captions are: dataset, prompt set, engine, model and generation settings."""
        identity = {name: self.manifest[name] for name in IDENTITY_FIELDS}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def check_dataset(self, dataset: ImageList) -> None:
        """`StoreMismatchError` if this store was made for another dataset than `dataset`."""
        fingerprint = dataset.fingerprint()
        if fingerprint != self.manifest["dataset_fingerprint"] or len(dataset) != self.num_images:
            raise StoreMismatchError(
                f"{self.path}: caption store was made for another dataset "
                f"({self.num_images} images, fingerprint {self.manifest['dataset_fingerprint']}) than "
                f"{dataset.source} ({len(dataset)} images, fingerprint {fingerprint})"
            )

    # ----------------------------------------------------------------------------------------- shards
    def shard_range(self, shard: int) -> range:
        """Image indices of shard `shard`: contiguous blocks whose sizes differ by at most one."""
        self._check_shard(shard)
        base, extra = divmod(self.num_images, self.num_shards)
        start = shard * base + min(shard, extra)
        return range(start, start + base + (1 if shard < extra else 0))

    def shard_of(self, image: int) -> int:
        """The shard holding image `image` (the inverse of `shard_range`)."""
        if not 0 <= image < self.num_images:
            raise InputError(f"{self.path}: image index {image} is out of range [0, {self.num_images})")
        base, extra = divmod(self.num_images, self.num_shards)
        large = extra * (base + 1)  # the first `extra` shards hold one image more
        return image // (base + 1) if image < large else extra + (image - large) // base

    def shard_path(self, shard: int) -> Path:
        self._check_shard(shard)
        return self.path / f"shard-{shard:05d}-of-{self.num_shards:05d}.parquet"

    def _sweep_temporaries_of_finished_shards(self) -> None:
        """Remove what a run killed between a shard's rename and its sweep left; nobody rewrites those shards."""
        for shard in range(self.num_shards):
            if self.shard_path(shard).exists():
                remove_stale_temporaries(self.shard_path(shard))
                shard_locks.remove_if_stale(self.shard_path(shard))

    def damaged_shards(self, shards: Iterable[int]) -> list[tuple[int, str]]:
        """(shard, reason) for each written shard of `shards` whose file is not a whole shard of this store: a
        truncated or corrupt Parquet file, another shard's or another run's file (its `made_by` disagrees with
        the manifest), columns vlmkd cannot read, or another number of rows than its images and prompts call for."""
        import pyarrow.parquet as pq

        damaged = []
        for shard in shards:
            path = self.shard_path(shard)
            if not path.exists():
                continue
            try:
                footer = pq.read_metadata(path)
                problem = shard_file.footer_problem(path, shard, self.made_by, footer)
                expected = (len(self.shard_range(shard)) - len(shard_file.failures(footer))) * len(self.prompt_ids)
            except (ValueError, TypeError) as error:  # ArrowInvalid (no footer: truncated), bad JSON
                damaged.append((shard, " ".join(str(error).split())[:200]))
                continue
            if problem:
                damaged.append((shard, problem))
            elif footer.num_rows != expected:
                damaged.append((shard, f"{footer.num_rows} rows, {expected} expected"))
        return damaged

    def discard_shard(self, shard: int) -> None:
        """Delete a damaged shard file so that it is captioned again."""
        self.shard_path(shard).unlink(missing_ok=True)

    def claim_shard(self, shard: int) -> bool:
        """Lock an unwritten shard for this process (see `vlmkd.caption.shard_locks`); False if it is written
        or a live process holds it."""
        return shard_locks.claim(self.shard_path(shard))

    def release_shard(self, shard: int) -> None:
        shard_locks.release(self.shard_path(shard))

    def missing_shards(self) -> list[int]:
        """Shards not written yet, in order."""
        return [k for k in range(self.num_shards) if not self.shard_path(k).exists()]

    def write_shard(
        self, shard: int, rows: Iterable[Row], failed: Sequence[Failure] = (), *, replace: bool = True
    ) -> Path:
        """Write shard `shard` atomically (temporary file, fsync, rename): its rows and its unreadable images.

        Every image of `shard_range(shard)` must appear either with one row per prompt id or in `failed`.
        `replace=False` publishes first-writer-wins (what captioning runs use): a shard another process
        published already is kept and this content dropped, and neither can trip over the other's files.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(rows)
        self._check_shard_content(shard, rows, failed)
        served_as: dict[str, list[list[Any]]] = {}  # captions kept from a server that named another model
        for index, _, prompt_id, caption in rows:
            if isinstance(caption, ServedCaption):
                served_as.setdefault(caption.served_as, []).append([index, prompt_id])
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
        table = pa.table(
            {
                "image_index": pa.array(columns[0], type=pa.int64()),
                "image_path": pa.array(columns[1], type=pa.string()),
                "prompt_id": pa.array(columns[2], type=pa.string()),
                "caption": pa.array(columns[3], type=pa.string()),
            }
        ).replace_schema_metadata(shard_file.metadata(shard, [list(f) for f in failed], self.made_by, served_as))
        target = self.shard_path(shard)
        with atomic_write(target, replace=replace, ignore_dir_errors=True) as handle:  # some filesystems refuse it
            pq.write_table(table, handle, compression="zstd")
        remove_stale_temporaries(target)  # left by a run killed while writing this shard
        return target

    def read_shard(self, shard: int) -> pa.Table:
        """The rows of one finished shard, checked and normalised (`shard_file.read`)."""
        path = self.shard_path(shard)
        if not path.exists():
            raise InputError(f"{self.path}: shard {shard} is not written yet; rerun vlmkd-caption to finish it")
        footer = self.checked_footer(shard)
        try:
            return shard_file.read(path, footer)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            if isinstance(error, InputError):
                raise
            raise _unreadable_shard(path, error) from None

    def checked_footer(self, shard: int) -> pq.FileMetaData:
        """The Parquet footer of one finished shard, checked (`shard_file.footer_problem`): `InputError` naming
        the file and what is wrong."""
        import pyarrow.parquet as pq

        path = self.shard_path(shard)
        try:
            footer = pq.read_metadata(path)
        except (OSError, ValueError) as error:
            raise _unreadable_shard(path, error) from None
        problem = shard_file.footer_problem(path, shard, self.made_by, footer)
        if problem:
            raise InputError(
                f"{path}: caption shard refused: {problem}; rerun vlmkd-caption to caption it again (a damaged "
                "shard is captioned anew), or fix the file"
            )
        return footer

    def shard_rows(self, shard: int) -> int:
        """Rows in one finished shard, from its footer (no captions read)."""
        return self.checked_footer(shard).num_rows

    def read_table(self) -> pa.Table:
        """All rows in (image, prompt) order; `InputError` listing the missing shards if incomplete."""
        import pyarrow as pa

        self.check_complete()
        return pa.concat_tables([self.read_shard(k) for k in range(self.num_shards)])

    def check_complete(self) -> None:
        """`InputError` listing the missing shards if the store is not complete."""
        missing = self.missing_shards()
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
            raise InputError(
                f"{self.path}: caption store is incomplete: {len(missing)} of {self.num_shards} shards missing "
                f"({shown}); rerun vlmkd-caption with the same settings to finish it"
            )

    def failed_images(self, shards: Iterable[int] | None = None) -> list[Failure]:
        """(image_index, image_path, reason) of every image skipped as unreadable, over finished shards (of
        `shards`, default all)."""
        failures: list[Failure] = []
        for shard in range(self.num_shards) if shards is None else shards:
            path = self.shard_path(shard)
            if path.exists():
                footer = self.checked_footer(shard)
                try:
                    failures += shard_file.failures(footer)
                except (TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
                    raise _unreadable_shard(path, error) from None
        return failures

    def served_as(self, shards: Iterable[int] | None = None) -> dict[str, list[tuple[int, str]]]:
        """Model name -> (image_index, prompt_id) of every caption whose server said it served that model instead
        of the one asked for (kept with `--served-model record`), over finished shards (of `shards`, default
        all); empty when every answer named the model asked for."""
        found: dict[str, list[tuple[int, str]]] = {}
        for shard in range(self.num_shards) if shards is None else shards:
            path = self.shard_path(shard)
            if path.exists():
                footer = self.checked_footer(shard)
                try:
                    recorded = shard_file.served_as(footer)
                except (TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
                    raise _unreadable_shard(path, error) from None
                for name, captions in recorded.items():
                    found.setdefault(name, []).extend(captions)
        return found

    # --------------------------------------------------------------------------------------- checking
    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.num_shards:
            raise InputError(f"{self.path}: shard index {shard} is out of range [0, {self.num_shards})")

    def _check_shard_content(self, shard: int, rows: list[Row], failed: Sequence[Failure]) -> None:
        expected = self.shard_range(shard)
        failed_indices = {f[0] for f in failed}
        wanted = [(i, p) for i in expected if i not in failed_indices for p in self.prompt_ids]
        got = [(row[0], row[2]) for row in rows]
        if got != wanted or not failed_indices <= set(expected):
            raise ValueError(
                f"shard {shard}: rows must cover images {expected.start}..{expected.stop - 1} x prompts "
                f"{list(self.prompt_ids)} in order, failed images excepted ({len(got)} rows, {len(wanted)} expected)"
            )
        for row in rows:  # engines' answers are checked before they get here (the runner makes them failures)
            problem = shard_file.caption_problem(row[3]) if isinstance(row[3], str) else "not a string"
            if problem:
                raise ValueError(f"shard {shard}: image {row[0]}, prompt {row[2]}: {problem}")


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (missing or of the wrong type), or None."""
    missing = [name for name in (*SETTINGS_FIELDS, "model_id") if name not in manifest]
    if missing:
        return f"lacks {', '.join(missing)}"
    for name in ("dataset_fingerprint", "engine", "model_id", "model_fingerprint"):
        if not isinstance(manifest[name], str):
            return f"{name} is not a string"
    counts = [manifest[name] for name in ("num_images", "num_shards")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts) or counts[1] > counts[0]:
        return "num_images and num_shards must be integers with 1 <= num_shards <= num_images"
    if not isinstance(manifest["generation"], dict):
        return "generation is not a mapping"
    prompt_set = manifest["prompt_set"]
    prompts = prompt_set.get("prompts") if isinstance(prompt_set, dict) else None
    if not isinstance(prompts, list) or not prompts:
        return "prompt_set.prompts is not a non-empty list"
    if not all(isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("id", "template")) for p in prompts):
        return "prompt_set.prompts must be {id, template} strings"
    if len({p["id"] for p in prompts}) != len(prompts):
        return "prompt_set.prompts has duplicate ids"
    return None


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable list of the settings in which two manifests differ (empty when compatible)."""
    differences = []
    for name in SETTINGS_FIELDS:
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name == "prompt_set" and isinstance(a, dict) and isinstance(b, dict):
            a, b = f"{a.get('name')} ({a.get('fingerprint')})", f"{b.get('name')} ({b.get('fingerprint')})"
        elif isinstance(a, dict) and isinstance(b, dict):
            differences += [
                f"{name}.{key}: {a.get(key)!r} in the store, {b.get(key)!r} now"
                for key in sorted(set(a) | set(b))
                if a.get(key) != b.get(key)
            ]
            continue
        differences.append(f"{name}: {a!r} in the store, {b!r} now")
    return differences


def _unreadable_shard(path: Path, error: Exception) -> InputError:
    reason = " ".join(str(error).split())  # pyarrow's messages span lines; the CLIs print one
    return InputError(f"{path}: unreadable caption shard ({reason}); delete it and rerun vlmkd-caption to rewrite it")


def _delete_store_files(path: Path) -> None:
    """Shards and temporary files first, the manifest last: other ranks wait for a new manifest."""
    for entry in path.iterdir():
        if _SHARD_RE.fullmatch(entry.name) or _TMP_RE.fullmatch(entry.name) or _LOCK_RE.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
    (path / MANIFEST_NAME).unlink(missing_ok=True)


def _publish_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write JSON to `path` atomically without replacing a file another process published first."""
    write_json_atomic(path, content, replace=False, ignore_dir_errors=True)  # some filesystems refuse fsync on dirs
    remove_stale_temporaries(path)  # left by runs killed before publishing
