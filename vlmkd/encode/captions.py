"""Read a caption store into a dense (image, prompt) grid of texts; every missing cell is an error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmkd.caption.store import CaptionStore
from vlmkd.errors import InputError


@dataclass(frozen=True)
class CaptionGrid:
    """Captions in (image, prompt) row-major order: `texts[i * len(prompt_ids) + p]`."""

    texts: list[str]
    num_images: int
    prompt_ids: tuple[str, ...]

    def digest(self) -> str:
        """A hash of the caption texts themselves, so re-captioning with the same settings is noticed too."""
        hasher = hashlib.sha256()
        for text in self.texts:
            hasher.update(text.encode())
            hasher.update(b"\x00")
        return hasher.hexdigest()[:16]

    def rows(self, images: range) -> list[str]:
        """The captions of a contiguous run of images, every prompt of each, in order."""
        width = len(self.prompt_ids)
        return self.texts[images.start * width : images.stop * width]


def read_caption_grid(store: CaptionStore) -> CaptionGrid:
    """Every caption of `store`; InputError naming the image and prompt of the first caption that is missing."""
    table = store.read_table()  # refuses an unfinished store, naming its missing shards
    prompt_ids = store.prompt_ids
    num_images, width = store.num_images, len(prompt_ids)
    images = table.column("image_index").to_numpy(zero_copy_only=False)
    known = pa.array(prompt_ids, type=pa.string())
    columns = pc.fill_null(pc.index_in(table.column("prompt_id"), value_set=known), -1).to_numpy()
    captions = table.column("caption").to_pylist()
    outside = (images < 0) | (images >= num_images) | (columns < 0)
    if outside.any():
        bad = int(np.argmax(outside))
        raise InputError(
            f"{store.path}: row {bad} (image {images[bad]}, prompt {table.column('prompt_id')[bad].as_py()!r}) "
            f"is outside the store's {num_images} images x prompts {list(prompt_ids)}"
        )
    cells = images * width + columns.astype(np.int64)
    counts = np.bincount(cells, minlength=num_images * width)
    if counts.max(initial=0) > 1:
        cell = int(np.argmax(counts > 1))
        raise InputError(
            f"{store.path}: image {cell // width}, prompt {prompt_ids[cell % width]} has {counts[cell]} captions"
        )
    null_rows = [row for row, caption in enumerate(captions) if caption is None]
    missing = np.flatnonzero(counts == 0).tolist() + sorted(int(cells[row]) for row in null_rows)
    if missing:
        raise InputError(_missing_message(store, table, missing, width))
    texts: list[str] = [""] * (num_images * width)
    for cell, caption in zip(cells.tolist(), captions, strict=True):
        texts[cell] = caption
    return CaptionGrid(texts=texts, num_images=num_images, prompt_ids=prompt_ids)


def _missing_message(store: CaptionStore, table: pa.Table, missing: list[int], width: int) -> str:
    cell = missing[0]
    image, prompt = cell // width, store.prompt_ids[cell % width]
    failed = {index: (path, reason) for index, path, reason in store.failed_images()}
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
