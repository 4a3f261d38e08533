"""Count the work a transformers VLM does while captioning: vision-tower calls and rows, text-model token
positions (prefill and decode), by forward hooks on the model's own submodules; for tests and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vlmkd.caption.engines.hf_sharing import TEXT_MODELS, VISION_TOWERS, find_submodule

PATCH_EMBEDDINGS = ("embeddings", "vision_model.embeddings", "patch_embed")  # inside the vision tower


@dataclass
class WorkCounts:
    """What the vision tower and the text model computed while counting."""

    vision_calls: int = 0  # forward calls of the vision tower's patch embedding
    vision_rows: int = 0  # rows it embedded: images, tiles of images (anyres) or patches (Qwen2-VL)
    # token positions of text-model calls with more than one token per row (padding included); an encoder-decoder's
    # encoder runs outside its forward and is not counted
    prefill_tokens: int = 0
    decode_tokens: int = 0  # token positions of one-token-per-row calls (generation steps)


@contextlib.contextmanager
def counting_work(model: Any) -> Iterator[WorkCounts]:
    """While active, count `model`'s vision-tower and text-model work into the yielded `WorkCounts`."""
    counts = WorkCounts()
    tower, text = find_submodule(model, VISION_TOWERS), find_submodule(model, TEXT_MODELS)
    # the patch embedding, not the tower itself: `hf_sharing.vision_once` calls the tower on more rows than it embeds
    embedding = find_submodule(tower, PATCH_EMBEDDINGS) if tower is not None else None
    if embedding is None or text is None:
        raise RuntimeError(f"{type(model).__name__}: cannot find its vision tower or text model to count")

    def on_vision(module: Any, args: tuple, kwargs: dict) -> None:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        counts.vision_calls += 1
        counts.vision_rows += int(pixels.shape[0])

    def on_text(module: Any, args: tuple, kwargs: dict) -> None:
        candidates = (kwargs.get(k) for k in ("inputs_embeds", "input_ids", "decoder_input_ids"))
        tokens = next((t for t in candidates if t is not None), args[0] if args else None)
        if tokens is None:  # an encoder-decoder's decoder step given only its cache
            return
        rows, length = int(tokens.shape[0]), int(tokens.shape[1])
        if length > 1:
            counts.prefill_tokens += rows * length
        else:
            counts.decode_tokens += rows

    handles = [
        embedding.register_forward_pre_hook(on_vision, with_kwargs=True),
        text.register_forward_pre_hook(on_text, with_kwargs=True),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()
