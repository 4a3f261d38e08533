"""Model inputs for a batch of images with all their prompts, built with one processor call per image.

The processor runs once per image, with the image's first prompt: that gives the image's pixel tensors and the
token ids of its first prompt with the image placeholder expanded (anyres tiles, Qwen2-VL's merged patches,
Idefics3's tiles...). Every other prompt's ids are the same up to where the texts part, after the image: they are
the first prompt's expanded ids up to that point, then the tokenizer's ids of the rest of the prompt's own text,
then whatever the processor appends to every prompt. Image placeholders are special tokens, so the text after
them tokenizes the same either way; the derivation is checked on every image (`ImagePrompts.build` returns None
when it does not hold), and the engine checks it once against the processor's own ids of every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TokenIds = list[int]


@dataclass(frozen=True)
class ImagePrompts:
    """One image's prompts as token ids (image placeholders expanded), and the per-token extras the processor
    returned for its first prompt (e.g. Qwen2-VL's `mm_token_type_ids`), by name."""

    ids: list[TokenIds]  # one per prompt, in order
    first_extras: dict[str, TokenIds]

    @classmethod
    def build(
        cls,
        first_ids: TokenIds,
        first_extras: dict[str, TokenIds],
        texts: Sequence[str],
        tokenize: Any,
        image_token_id: int | None,
    ) -> ImagePrompts | None:
        """`first_ids`: the processor's ids of `texts[0]` with the image; `tokenize(text)`: the tokenizer's ids of a
        text without the image expanded. The part of `texts[0]` after its last image token must end `first_ids`,
        possibly followed by a few tokens the processor appends to every prompt (PaliGemma's newline); every
        other prompt must differ from the first only after the image. None when this does not hold."""
        plain_first = tokenize(texts[0])
        after_image = _after_last(plain_first, image_token_id)
        end = _end_of(first_ids, plain_first[after_image:])
        if end is None:
            return None
        appended = first_ids[end:]
        ids = [list(first_ids)]
        for text in texts[1:]:
            plain = tokenize(text)
            common = _common_length(plain_first, plain)
            if common < after_image:
                return None
            head = end - (len(plain_first) - common)
            ids.append(first_ids[:head] + plain[common:] + appended)
        return cls(ids, first_extras)

    def prefix_length(self, image_token_id: int | None) -> int | None:
        """Tokens every prompt starts with, leaving each at least one token of its own (the first generated token
        needs an input): None when an image token lies beyond that shared part (a template that puts prompt text
        before the image)."""
        length = min(len(ids) for ids in self.ids) - 1
        for ids in self.ids[1:]:
            length = min(length, _common_length(self.ids[0], ids))
        if image_token_id is not None and any(image_token_id in ids[length:] for ids in self.ids):
            return None
        return length


def unpadded_rows(inputs: dict[str, Any]) -> tuple[list[TokenIds], list[dict[str, TokenIds]]]:
    """A processor's padded `input_ids` as one list of real token ids per row, and the other per-token tensors
    (same shape as `input_ids`, e.g. `mm_token_type_ids`, `token_type_ids`) cut the same way."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    per_token = [k for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and _same_shape(v, ids)]
    rows, extras = [], []
    for row in range(ids.shape[0]):
        keep = mask[row]
        rows.append(ids[row][keep].tolist())
        extras.append({k: inputs[k][row][keep].tolist() for k in per_token})
    return rows, extras


def image_level(inputs: dict[str, Any]) -> dict[str, Any]:
    """The processor outputs that belong to the images (pixels, sizes, grids), not to the tokens."""
    ids, text_only = inputs["input_ids"], ("input_ids", "attention_mask", "labels")
    return {k: v for k, v in inputs.items() if k not in text_only and not _same_shape(v, ids)}


def left_padded(
    rows: Sequence[TokenIds], pad: int, width: int | None = None, at: Sequence[int] | None = None
) -> tuple[Any, Any]:
    """(ids, attention mask) tensors of `rows` padded to `width` (default: the longest), on the left or, given
    `at`, inserted before token `at[k]` of row `k` (as BLIP-2's processor pads between query tokens and text)."""
    import torch

    width = max(len(row) for row in rows) if width is None else width
    at = [0] * len(rows) if at is None else at
    ids, mask = [], []
    for row, split in zip(rows, at, strict=True):
        padding = width - len(row)
        ids.append([*row[:split], *[pad] * padding, *row[split:]])
        mask.append([1] * split + [0] * padding + [1] * (len(row) - split))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


# At most this many tokens may follow the prompt text in a processor's ids (PaliGemma appends one newline).
MAX_APPENDED_TOKENS = 4


def _after_last(ids: Sequence[int], token: int | None) -> int:
    """Index after the last `token` in `ids` (0 when absent)."""
    positions = [k for k, t in enumerate(ids) if t == token] if token is not None else []
    return positions[-1] + 1 if positions else 0


def _end_of(ids: Sequence[int], tail: Sequence[int]) -> int | None:
    """Where `tail` (non-empty) ends in `ids`, looking no more than `MAX_APPENDED_TOKENS` before the end."""
    if not tail:
        return None
    for appended in range(MAX_APPENDED_TOKENS + 1):
        end = len(ids) - appended
        if end >= len(tail) and list(ids[end - len(tail) : end]) == list(tail):
            return end
    return None


def _same_shape(value: Any, ids: Any) -> bool:
    return hasattr(value, "shape") and tuple(value.shape) == tuple(ids.shape)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k
