"""Caption a dataset into a store: pick this process's shards, stream images, batch requests, write shards."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmkd.caption.engines import (
    CaptionEngine,
    GenerationSettings,
    Request,
    check_engine,
    load_engine,
    model_fingerprint,
)
from vlmkd.caption.prompts import PromptSet, load_prompt_set
from vlmkd.caption.store import CaptionStore, Failure, Row, make_manifest
from vlmkd.data import ImageList, load_rgb
from vlmkd.errors import InputError, StoreMismatchError

DEFAULT_SHARD_SIZE = 256  # images per shard when --num-shards is not given: what a crash can cost at most
MANIFEST_WAIT_S = 600.0  # how long other ranks wait for rank 0 to replace a store under --overwrite


@dataclass(frozen=True)
class Assignment:
    """Which process this is among those sharing a store: shards `k` with `k % world_size == rank`."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Assignment:
        """From `torchrun`'s RANK / WORLD_SIZE (a single process when they are absent)."""
        try:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise InputError(f"RANK/WORLD_SIZE must be integers, got {os.environ.get('RANK')!r}, "
                             f"{os.environ.get('WORLD_SIZE')!r}") from None  # fmt: skip
        if not 0 <= rank < world:
            raise InputError(f"RANK {rank} is out of range for WORLD_SIZE {world}")
        return cls(rank, world)

    def shards(self, num_shards: int) -> list[int]:
        return list(range(self.rank, num_shards, self.world_size))


@dataclass
class CaptionReport:
    """What one run did; `store` is the (possibly still incomplete, if shared) caption store."""

    store: CaptionStore
    shards_written: list[int] = field(default_factory=list)
    shards_already_done: list[int] = field(default_factory=list)
    images: int = 0  # images handled by this run, unreadable ones included
    captions: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    store_seconds: float = 0.0  # writing shards

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def caption_dataset(
    dataset: ImageList,
    model: str | Path,
    out: Path,
    *,
    engine: str | CaptionEngine = "hf",
    prompts: str | Path | PromptSet | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
    num_shards: int | None = None,
    shard_index: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    seed: int = 0,
    assignment: Assignment | None = None,
) -> CaptionStore:
    """Caption every (image, prompt) pair of `dataset` into the store at `out`; see `run_captioning`."""
    return run_captioning(**locals()).store


def run_captioning(
    dataset: ImageList,
    model: str | Path,
    out: Path,
    *,
    engine: str | CaptionEngine = "hf",
    prompts: str | Path | PromptSet | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
    num_shards: int | None = None,
    shard_index: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    seed: int = 0,
    assignment: Assignment | None = None,
) -> CaptionReport:
    """Caption the shards this process owns that are not finished yet, and report what was done.

    Shards: `shard_index` alone, else `assignment` (default: torchrun's RANK/WORLD_SIZE), else all. Finished
    shards are never rewritten; a store made with other settings is refused unless `overwrite`. Unreadable
    images are skipped and recorded in the store. `engine` may be an already loaded `CaptionEngine` (its own
    generation settings then apply, and the caller keeps ownership of it).
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    prompt_set = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts)
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, num_beams, seed, dtype)
    if not isinstance(engine, str):
        settings = engine.settings  # a loaded engine brings its own settings; the store records those
    assignment = assignment if assignment is not None else Assignment.from_env()
    engine_name = engine if isinstance(engine, str) else engine.name
    check_engine(engine_name)
    out = Path(out)
    existing = _open_existing(out)  # the one time this run reads the store's manifest
    if num_shards is None:
        num_shards = existing.num_shards if existing else _default_num_shards(len(dataset), assignment.world_size)
    manifest = make_manifest(
        dataset_fingerprint=dataset.fingerprint(),
        num_images=len(dataset),
        prompt_set=prompt_set.record(),
        engine=engine_name,
        model_id=str(model),
        model_fingerprint=model_fingerprint(model),
        generation=settings.record(),
        num_shards=num_shards,
    )
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise InputError(f"shard index {shard_index} is out of range [0, {num_shards})")
    mine = [shard_index] if shard_index is not None else assignment.shards(num_shards)
    # Check the store and load the model before writing anything: a mismatch or a bad model path then
    # leaves no trace, and a rerun with nothing left to do never loads the model.
    done = set()
    if CaptionStore.check_compatible(out, manifest, overwrite=overwrite, existing=existing):
        existing = existing if existing is not None else CaptionStore.open(out)  # another rank just made it
        done = set(range(num_shards)) - set(existing.missing_shards())
    else:
        existing = None
    loaded = engine
    device = _local_device(device)
    if isinstance(engine, str) and any(k not in done for k in mine):
        loaded = load_engine(engine, model, settings, device=device, trust_remote_code=trust_remote_code)
    try:
        store = _open_store(out, manifest, overwrite, assignment, existing)
        missing = set(store.missing_shards())
        report = CaptionReport(store, shards_already_done=[k for k in mine if k not in missing])
        todo = [k for k in mine if k in missing]
        if todo:
            if isinstance(loaded, str):  # a shard went missing since the check above
                loaded = load_engine(loaded, model, settings, device=device, trust_remote_code=trust_remote_code)
            _caption_shards(store, dataset, prompt_set, loaded, todo, batch_size, progress, report)
    finally:
        if isinstance(engine, str) and not isinstance(loaded, str):
            loaded.close()
    report.seconds = time.perf_counter() - start
    return report


def _caption_shards(
    store: CaptionStore,
    dataset: ImageList,
    prompt_set: PromptSet,
    engine: CaptionEngine,
    shards: Sequence[int],
    batch_size: int,
    progress: bool,
    report: CaptionReport,
) -> None:
    import pyarrow.parquet  # noqa: F401 - imported once up front, not inside the first shard's write time
    from tqdm import tqdm

    total = sum(len(store.shard_range(k)) for k in shards)
    bar = tqdm(total=total, unit="img", desc="captioning", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlmkd-decode") as pool:
        for shard in shards:
            rows, failed = _caption_shard(store.shard_range(shard), dataset, prompt_set, engine, batch_size, pool, bar)
            tick = time.perf_counter()
            store.write_shard(shard, rows, failed)
            report.store_seconds += time.perf_counter() - tick
            report.shards_written.append(shard)
            report.images += len(store.shard_range(shard))
            report.captions += len(rows)
            report.failed += failed
            bar.set_postfix(shards=f"{len(report.shards_written)}/{len(shards)}", unreadable=len(report.failed))


def _caption_shard(
    indices: range,
    dataset: ImageList,
    prompt_set: PromptSet,
    engine: CaptionEngine,
    batch_size: int,
    pool: ThreadPoolExecutor,
    bar: Any,
) -> tuple[list[Row], list[Failure]]:
    """Rows (in image, prompt order) and unreadable images of one shard. Batches run over image
    boundaries, always from the shard's start, so a rerun builds exactly the same batches."""
    rows: list[Row] = []
    failed: list[Failure] = []
    pending: list[tuple[int, str, Request]] = []  # (image index, prompt id, request)
    last_prompt = prompt_set.prompts[-1].id

    def flush() -> None:
        captions = engine.caption([request for _, _, request in pending])
        if len(captions) != len(pending):
            raise RuntimeError(f"engine {engine.name} returned {len(captions)} captions for {len(pending)} requests")
        rows.extend((i, dataset.samples[i].path, p, c) for (i, p, _), c in zip(pending, captions, strict=True))
        bar.update(sum(prompt_id == last_prompt for _, prompt_id, _ in pending))  # images now complete
        pending.clear()

    for index, image in _prefetch(pool, dataset, indices, lookahead=2 * batch_size):
        if isinstance(image, InputError):
            failed.append((index, dataset.samples[index].path, str(image)))
            bar.write(f"skipping unreadable image: {image}", file=sys.stderr)
            bar.update(1)
            continue
        label = dataset.classnames[dataset.samples[index].label]
        for prompt in prompt_set.prompts:
            pending.append((index, prompt.id, Request(image, prompt.render(label))))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return rows, failed


def _prefetch(
    pool: ThreadPoolExecutor, dataset: ImageList, indices: range, lookahead: int
) -> Iterator[tuple[int, Image.Image | InputError]]:
    """Decode images on worker threads, `lookahead` ahead of the consumer, yielding them in order."""
    queue: deque[tuple[int, Future[Image.Image | InputError]]] = deque()
    iterator = iter(indices)
    for index in iterator:
        queue.append((index, pool.submit(_decode, dataset.path(index))))
        if len(queue) >= lookahead:
            break
    while queue:
        index, future = queue.popleft()
        next_index = next(iterator, None)
        if next_index is not None:
            queue.append((next_index, pool.submit(_decode, dataset.path(next_index))))
        yield index, future.result()


def _decode(path: Path) -> Image.Image | InputError:
    try:
        return load_rgb(path)
    except InputError as error:
        return error


def _open_store(
    out: Path, manifest: dict, overwrite: bool, assignment: Assignment, existing: CaptionStore | None
) -> CaptionStore:
    """Create or resume the store (`existing`: the compatible store already open); under `overwrite` with
    several ranks only rank 0 replaces it."""
    if not overwrite or assignment.rank == 0:
        return CaptionStore.create(out, manifest, overwrite=overwrite, existing=existing)
    deadline = time.monotonic() + MANIFEST_WAIT_S
    while True:
        try:
            return CaptionStore.create(out, manifest)  # succeeds once rank 0 has replaced the old store
        except (StoreMismatchError, InputError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _open_existing(out: Path) -> CaptionStore | None:
    """The store at `out`, or None when there is none or it cannot be read (`create` then says why)."""
    try:
        return CaptionStore.open(out)
    except InputError:
        return None


def _default_num_shards(num_images: int, world_size: int) -> int:
    return min(num_images, max(math.ceil(num_images / DEFAULT_SHARD_SIZE), world_size))


def _local_device(device: str) -> str:
    """`cuda` means this rank's GPU under torchrun (LOCAL_RANK)."""
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device
