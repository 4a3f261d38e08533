"""The captions of a complete caption store, read shard by shard: a dense (image, prompt) grid of texts in
which every missing cell is an error, never held whole in memory.

Encoding once read every caption of a store into one list (~1.6 KB per caption: ~3.5 GB more memory at
iNaturalist 2018's 2.2 million captions). `StoreCaptions` holds the shards one chunk of images spans, at most,
so the encoder's memory is flat in the store's size (`benchmarks/bench_encode_memory.py`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmkd.caption.store import CaptionStore
from vlmkd.errors import InputError


class StoreCaptions:
    """Captions of `store` in (image, prompt) row-major order; `InputError` naming the image and prompt of the
    first caption that is missing or doubled, or the row that lies outside its shard."""

    def __init__(self, store: CaptionStore) -> None:
        store.check_complete()
        self.store = store
        self.prompt_ids = store.prompt_ids
        self.num_images = store.num_images
        self._cached: dict[int, list[str]] = {}  # the shards the last `rows` call spanned

    def digest(self) -> str:
        """A hash of the caption texts themselves (so re-captioning with the same settings is noticed too),
        after every shard has been checked: one shard in memory at a time."""
        hasher = hashlib.sha256()
        for shard in range(self.store.num_shards):
            for text in self.shard_texts(shard):
                hasher.update(text.encode())
                hasher.update(b"\x00")
        return hasher.hexdigest()[:16]

    def rows(self, images: range) -> list[str]:
        """The captions of a contiguous run of images, every prompt of each, in order."""
        if not images:
            return []
        shards = range(self.store.shard_of(images.start), self.store.shard_of(images.stop - 1) + 1)
        self._cached = {k: self._cached[k] if k in self._cached else self.shard_texts(k) for k in shards}
        width = len(self.prompt_ids)
        texts: list[str] = []
        for shard in shards:
            block = self.store.shard_range(shard)
            start, stop = max(images.start, block.start), min(images.stop, block.stop)
            texts += self._cached[shard][(start - block.start) * width : (stop - block.start) * width]
        return texts

    def shard_texts(self, shard: int) -> list[str]:
        """The captions of one shard in (image, prompt) order, every cell checked."""
        store = self.store
        table = store.read_shard(shard)
        block, width = store.shard_range(shard), len(self.prompt_ids)
        images = table.column("image_index").to_numpy(zero_copy_only=False)
        known = pa.array(self.prompt_ids, type=pa.string())
        columns = pc.fill_null(pc.index_in(table.column("prompt_id"), value_set=known), -1).to_numpy()
        outside = (images < block.start) | (images >= block.stop) | (columns < 0)
        if outside.any():
            bad = int(np.argmax(outside))
            raise InputError(
                f"{store.shard_path(shard)}: row {bad} (image {images[bad]}, prompt "
                f"{table.column('prompt_id')[bad].as_py()!r}) is outside the shard's images {block.start}.."
                f"{block.stop - 1} x prompts {list(self.prompt_ids)}"
            )
        cells = (images - block.start) * width + columns.astype(np.int64)
        counts = np.bincount(cells, minlength=len(block) * width)
        if counts.max(initial=0) > 1:
            cell = int(np.argmax(counts > 1))
            raise InputError(
                f"{store.path}: image {block.start + cell // width}, prompt {self.prompt_ids[cell % width]} has "
                f"{counts[cell]} captions"
            )
        captions = table.column("caption").to_pylist()
        null_rows = [row for row, caption in enumerate(captions) if caption is None]
        missing = np.flatnonzero(counts == 0).tolist() + sorted(int(cells[row]) for row in null_rows)
        if missing:
            raise InputError(self._missing_message(shard, table, missing))
        texts: list[str] = [""] * (len(block) * width)
        for cell, caption in zip(cells.tolist(), captions, strict=True):
            texts[cell] = caption
        return texts

    def _missing_message(self, shard: int, table: pa.Table, missing: list[int]) -> str:
        store, width = self.store, len(self.prompt_ids)
        cell = missing[0]
        image, prompt = store.shard_range(shard).start + cell // width, self.prompt_ids[cell % width]
        failed = {index: (path, reason) for index, path, reason in store.failed_images(shards=[shard])}
        if image in failed:
            path, reason = failed[image]
            detail = f"image {image} ({path}) has no caption for prompt {prompt}: the captioner skipped it ({reason})"
        else:
            detail = f"image {image}{_path_of(table, image)} has no caption for prompt {prompt}"
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        return (
            f"{store.path}: {detail}{more}; features need every caption: fix or drop the image from the dataset "
            "and caption it again"
        )


def _path_of(table: pa.Table, image: int) -> str:
    rows = table.filter(pc.equal(table.column("image_index"), image))
    return f" ({rows.column('image_path')[0].as_py()})" if rows.num_rows else ""
