"""Caption a dataset into a store: pick this process's shards, stream images, batch requests, write shards."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmkd.caption.config import CaptionConfig
from vlmkd.caption.engines import (
    ENGINES,
    Caption,
    CaptionEngine,
    ImageRequest,
    RequestFailure,
    check_engine,
    load_engine,
    model_fingerprint,
)
from vlmkd.caption.prompts import PromptSet, load_prompt_set
from vlmkd.caption.shard_file import caption_problem
from vlmkd.caption.store import CaptionStore, Failure, Row, make_manifest
from vlmkd.data import ImageList, load_image_list, load_rgb
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.output_lock import holding

DEFAULT_SHARD_SIZE = 256  # images per shard when --num-shards is not given: what a crash can cost at most
REFUSED_PREFIX = "refused by the server"  # how an image a server refused is recorded, unlike an unreadable one
UNUSABLE_PREFIX = "unusable answer"  # an answer no store keeps (empty, whitespace, too long: `caption_problem`)
MANIFEST_WAIT_S = 600.0  # how long other ranks wait for rank 0 to replace a store under --overwrite
TOKEN_BUDGET_LOOKAHEAD = 64  # images decoded ahead when batches are sized by tokens (their count varies)


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
    shards_taken_elsewhere: list[int] = field(default_factory=list)  # locked or written by another process
    images: int = 0  # images handled by this run, unreadable ones included
    captions: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    store_seconds: float = 0.0  # writing shards (on a thread of its own, overlapping the captioning)
    store_wait_seconds: float = 0.0  # the part of it the captioning had to wait for
    store_cpu_seconds: float = 0.0  # CPU time of the writing (the rest of it is waiting for fsync)
    threads: int = 0  # torch CPU threads the run used

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run_captioning(
    config: CaptionConfig,
    *,
    dataset: ImageList | None = None,
    prompts: PromptSet | None = None,
    engine: CaptionEngine | None = None,
    assignment: Assignment | None = None,
) -> CaptionReport:
    """Caption the shards this process owns that are not finished yet, and report what was done.

    Shards: `config.shard_index` alone, else `assignment` (default: torchrun's RANK/WORLD_SIZE), else all.
    Finished shards are never rewritten; a store made with other settings is refused unless `config.overwrite`.
    Unreadable images, and images a server refused, are skipped and recorded in the store. Objects already in
    memory may replace what the config names: `dataset` (else `config.dataset` is loaded), `prompts` (else
    `config.prompts`), and a loaded `engine` (its own model and generation settings then apply, and the caller
    keeps ownership of it). `config.engine_options` go to `load_engine` (the openai engine's servers,
    concurrency, API-key variable...). `config.threads` (default: the idle cores, see `vlmkd.threads`) applies
    for the call only: torch's thread count is restored when it returns.
    """
    from vlmkd.threads import torch_threads

    # Captioning processes share a store (they split its shards); import and merge, which rewrite it, wait.
    lock = holding(config.out, what="caption store", shared=True) if config.out is not None else nullcontext()
    with torch_threads(config.threads), lock:
        return _run_captioning(config, dataset, prompts, engine, assignment)


def _run_captioning(
    config: CaptionConfig,
    dataset: ImageList | None,
    prompts: PromptSet | None,
    engine: CaptionEngine | None,
    assignment: Assignment | None,
) -> CaptionReport:
    import torch

    start = time.perf_counter()
    if dataset is None:
        if config.dataset is None:
            raise InputError("no dataset to caption: set `dataset` (a list file or ImageFolder directory)")
        dataset = load_image_list(config.dataset, root=config.root, classnames=config.classnames)
    if config.out is None:
        raise InputError("no caption store to write: set `out`")
    model = config.model if engine is None else engine.model_id
    out, num_shards, shard_index, overwrite = config.out, config.num_shards, config.shard_index, config.overwrite
    prompt_set = prompts if prompts is not None else load_prompt_set(config.prompts)
    # a loaded engine brings its own settings; the store records those
    settings = config.generation if engine is None else engine.settings
    assignment = assignment if assignment is not None else Assignment.from_env()
    engine_name = config.engine if engine is None else engine.name
    check_engine(engine_name)
    if model is None and not ENGINES.get(engine_name).describes_itself:
        raise InputError(f"captioning with engine {engine_name!r} needs a model (a directory or a cached hub id)")
    device = _local_device(config.device)

    def load() -> CaptionEngine:
        return load_engine(
            engine_name,
            model,
            settings,
            device=device,
            trust_remote_code=config.trust_remote_code,
            **config.engine_options,
        )

    # An engine that knows its own identity (servers report their model) is loaded first; it is cheap.
    loaded = load() if engine is None and ENGINES.get(engine_name).describes_itself else engine
    try:
        existing = _open_existing(out)  # the one time this run reads the store's manifest
        if num_shards is None:
            num_shards = existing.num_shards if existing else _default_num_shards(len(dataset), assignment.world_size)
        described = loaded is not None and loaded.describes_itself
        manifest = make_manifest(
            dataset_fingerprint=dataset.fingerprint(),
            num_images=len(dataset),
            prompt_set=prompt_set.record(),
            engine=engine_name,
            model_id=loaded.model_id if described else str(model),
            model_fingerprint=loaded.model_fingerprint() if described else model_fingerprint(model),
            generation=loaded.generation_record() if described else settings.record(),
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
        if loaded is None and any(k not in done for k in mine):
            loaded = load()
        store = _open_store(out, manifest, overwrite, assignment, existing)
        for shard, reason in store.damaged_shards(k for k in mine if k in done):
            print(f"{store.shard_path(shard)}: damaged shard ({reason}); captioning it again", file=sys.stderr)
            store.discard_shard(shard)
        missing = set(store.missing_shards())
        report = CaptionReport(store, shards_already_done=[k for k in mine if k not in missing])
        todo = [k for k in mine if k in missing]
        if todo:
            if loaded is None:  # a shard went missing since the check above
                loaded = load()
            limit = _BatchLimit.of(config, loaded, len(prompt_set.prompts))
            _caption_shards(store, dataset, prompt_set, loaded, todo, limit, config.progress, report)
    finally:
        if engine is None and loaded is not None:
            loaded.close()
    report.seconds = time.perf_counter() - start
    report.threads = torch.get_num_threads()
    return report


def _caption_shards(
    store: CaptionStore,
    dataset: ImageList,
    prompt_set: PromptSet,
    engine: CaptionEngine,
    shards: Sequence[int],
    limit: _BatchLimit,
    progress: bool,
    report: CaptionReport,
) -> None:
    """Caption `shards` in order, writing each once its last batch is back. Engines that wait on servers
    get `engine.submit_ahead` more captions submitted while the runner waits for the oldest batch."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401 - imported once up front, not inside the first shard's write time

    pa.array([0])  # pyarrow imports pandas on its first array (about a second): before any shard is timed
    from tqdm import tqdm

    total = sum(len(store.shard_range(k)) for k in shards)
    bar = tqdm(total=total, unit="img", desc="captioning", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    prompt_ids = [prompt.id for prompt in prompt_set.prompts]
    in_flight: deque[tuple[_ShardWork, list[int], Future[list[list[Caption]]]]] = deque()
    captions_in_flight = 0

    def write(work: _ShardWork) -> None:
        writer.submit(work.shard, *work.result(dataset))
        bar.set_postfix(shards=f"{len(report.shards_written)}/{len(shards)}", skipped=len(report.failed))

    def collect_oldest() -> None:
        nonlocal captions_in_flight
        work, indices, future = in_flight.popleft()
        captions = future.result()
        captions_in_flight -= len(indices) * len(prompt_ids)
        if len(captions) != len(indices) or any(len(per_image) != len(prompt_ids) for per_image in captions):
            raise RuntimeError(
                f"engine {engine.name} returned {[len(c) for c in captions]} captions for {len(indices)} images "
                f"of {len(prompt_ids)} prompts"
            )
        for reason in work.add(indices, prompt_ids, captions, dataset):
            bar.write(f"skipping {reason}", file=sys.stderr)
        bar.update(len(indices))
        work.batches_in_flight -= 1
        if work.all_submitted and not work.batches_in_flight:
            write(work)

    held: set[int] = set()
    with (
        bar,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlmkd-decode") as pool,
        _releasing(store, held),
        _ShardWriter(store, report, held) as writer,
    ):
        for shard in shards:
            if not store.claim_shard(shard):  # another live process is captioning it, or has finished it
                report.shards_taken_elsewhere.append(shard)
                bar.update(len(store.shard_range(shard)))
                continue
            held.add(shard)
            work = _ShardWork(shard)
            for indices, requests in _shard_batches(store.shard_range(shard), dataset, prompt_set, limit, pool, work,
                                                    bar):  # fmt: skip
                in_flight.append((work, indices, engine.submit(requests)))
                captions_in_flight += len(indices) * len(prompt_ids)
                work.batches_in_flight += 1
                while in_flight and captions_in_flight > engine.submit_ahead:
                    collect_oldest()
            work.all_submitted = True
            if not work.batches_in_flight:
                write(work)
        while in_flight:
            collect_oldest()
        writer.finish()


class _ShardWriter:
    """Writes finished shards in order on a thread of its own, so that fsync latency (tens of ms on a busy
    disk) overlaps captioning instead of stalling it; at most `MAX_PENDING` shards wait to be written."""

    MAX_PENDING = 2

    def __init__(self, store: CaptionStore, report: CaptionReport, held: set[int]) -> None:
        self.store = store
        self.report = report
        self.held = held  # shards this process has claimed; each is released once written
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmkd-store")
        self.pending: deque[tuple[int, int, list[Failure], Future[tuple[float, float]]]] = deque()

    def submit(self, shard: int, rows: list[Row], failed: list[Failure]) -> None:
        future = self.pool.submit(self._write, shard, rows, failed)
        self.pending.append((shard, len(rows), failed, future))
        self._collect(keep=self.MAX_PENDING)

    def _write(self, shard: int, rows: list[Row], failed: list[Failure]) -> tuple[float, float]:
        """(wall, CPU) seconds of writing one shard."""
        tick, cpu = time.perf_counter(), time.thread_time()
        self.store.write_shard(shard, rows, failed, replace=False)  # first writer wins
        self.store.release_shard(shard)
        self.held.discard(shard)
        return time.perf_counter() - tick, time.thread_time() - cpu

    def _collect(self, keep: int) -> None:
        """Account for the written shards, waiting for the oldest while more than `keep` are pending."""
        while self.pending and (len(self.pending) > keep or self.pending[0][3].done()):
            shard, rows, failed, future = self.pending.popleft()
            tick = time.perf_counter()
            wall, cpu = future.result()  # a failed write raises here
            self.report.store_wait_seconds += time.perf_counter() - tick
            self.report.store_seconds += wall
            self.report.store_cpu_seconds += cpu
            self.report.shards_written.append(shard)
            self.report.images += len(self.store.shard_range(shard))
            self.report.captions += rows
            self.report.failed += failed

    def finish(self) -> None:
        self._collect(keep=0)

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # Shards already handed over are written even when the run fails (before `_releasing` runs).
        self.pool.shutdown(wait=True)


@contextlib.contextmanager
def _releasing(store: CaptionStore, held: set[int]) -> Iterator[None]:
    """Release the locks of shards still held when captioning stops (an error, an interrupt)."""
    try:
        yield
    finally:
        for shard in sorted(held):
            store.release_shard(shard)


@dataclass
class _ShardWork:
    """One shard being captioned: its rows so far, its skipped images, and its batches still in flight."""

    shard: int
    captions: list[tuple[int, str, str]] = field(default_factory=list)  # (image index, prompt id, caption)
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (image index, reason)
    refused: dict[int, str] = field(default_factory=dict)  # image index -> reason (its first refused or unusable
    # answer: a failure from the engine, or an answer `caption_problem` rejects)
    batches_in_flight: int = 0
    all_submitted: bool = False

    def add(
        self,
        indices: Sequence[int],
        prompt_ids: Sequence[str],
        captions: Sequence[Sequence[Caption]],
        dataset: ImageList,
    ) -> list[str]:
        """Take a batch's answers (per image, one per prompt); the reasons of images refused for the first time."""
        new = []
        for index, image_captions in zip(indices, captions, strict=True):
            for prompt_id, caption in zip(prompt_ids, image_captions, strict=True):
                refused = isinstance(caption, RequestFailure)
                reason = caption.reason if refused else caption_problem(caption)
                if reason is None:
                    self.captions.append((index, prompt_id, caption))
                elif index not in self.refused:
                    self.refused[index] = (
                        f"{REFUSED_PREFIX if refused else UNUSABLE_PREFIX} (prompt {prompt_id}): {reason}"
                    )
                    new.append(f"{dataset.path(index)}: {self.refused[index]}")
        return new

    def result(self, dataset: ImageList) -> tuple[list[Row], list[Failure]]:
        """Rows in (image, prompt) order without refused images, and every skipped image by index."""
        rows = [(i, dataset.samples[i].path, p, c) for i, p, c in self.captions if i not in self.refused]
        skipped = self.unreadable + list(self.refused.items())
        return rows, [(i, dataset.samples[i].path, reason) for i, reason in sorted(skipped)]


@dataclass(frozen=True)
class _BatchLimit:
    """How full a batch of whole images may get: `limit` units of `cost` per image (captions for `batch_size`, the
    engine's estimated tokens for `batch_tokens`), and how many images to decode ahead."""

    limit: int
    cost: Callable[[ImageRequest], int]
    lookahead: int

    @classmethod
    def of(cls, config: CaptionConfig, engine: CaptionEngine, prompts: int) -> _BatchLimit:
        if config.batch_tokens is not None:
            return cls(config.batch_tokens, engine.estimated_tokens, TOKEN_BUDGET_LOOKAHEAD)
        return cls(config.batch_size, lambda request: len(request.prompts), 2 * max(1, config.batch_size // prompts))


def _shard_batches(
    indices: range,
    dataset: ImageList,
    prompt_set: PromptSet,
    limit: _BatchLimit,
    pool: ThreadPoolExecutor,
    work: _ShardWork,
    bar: Any,
) -> Iterator[tuple[list[int], list[ImageRequest]]]:
    """Batches of (image indices, requests) of one shard, each image whole with all its prompts, filled while
    the next image fits `limit` (at least one image); unreadable images noted in `work`. Batches always start at
    the shard's start, so a rerun builds the same batches."""
    batch: list[int] = []
    requests: list[ImageRequest] = []
    used = 0
    for index, image in _prefetch(pool, dataset, indices, lookahead=limit.lookahead):
        if isinstance(image, InputError):
            work.unreadable.append((index, str(image)))
            bar.write(f"skipping unreadable image: {image}", file=sys.stderr)
            bar.update(1)
            continue
        label = dataset.classnames[dataset.samples[index].label]
        request = ImageRequest(image, tuple(prompt.render(label) for prompt in prompt_set.prompts), dataset.path(index))
        cost = limit.cost(request)
        if requests and used + cost > limit.limit:
            yield batch, requests
            batch, requests, used = [], [], 0
        batch.append(index)
        requests.append(request)
        used += cost
    if requests:
        yield batch, requests


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
