"""How much a VLM's captions differ between images, per prompt: distinct texts and mean pairwise cosine.

A caption that is the same for every image (a tiny random VLM often writes one) carries no information
about the image; neither do captions that differ only in wording the text encoder barely sees. The raw
cosine of sentence features is high even between unrelated captions (all-MiniLM-L6-v2 is anisotropic), so
the mean pairwise cosine is also given after centring each prompt's features on their mean: near 0 for
captions that vary independently of each other, undefined when every caption is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_ROWS = 8192


@dataclass(frozen=True)
class PromptDiversity:
    """Diversity figures of one prompt's captions over a store's images."""

    prompt_id: str
    captions: int
    distinct_captions: int
    mean_cosine: float | None = None  # mean over image pairs of the features' cosine; None without features
    mean_cosine_centred: float | None = None  # the same after subtracting the prompt's mean feature


def distinct_captions(table: pa.Table, prompt_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(captions, distinct captions) per prompt id of a caption table (columns prompt_id, caption)."""
    grouped = table.group_by("prompt_id").aggregate([("caption", "count"), ("caption", "count_distinct")])
    found = {
        prompt: (int(count), int(distinct))
        for prompt, count, distinct in zip(
            grouped["prompt_id"].to_pylist(),
            grouped["caption_count"].to_pylist(),
            grouped["caption_count_distinct"].to_pylist(),
            strict=True,
        )
    }
    return {prompt: found.get(prompt, (0, 0)) for prompt in prompt_ids}


def mean_pairwise_cosine(vectors: np.ndarray, *, centre: bool = False) -> float | None:
    """Mean cosine similarity over all pairs i != j of the rows of `vectors` (N x D, any float dtype).

    Exact, in O(N D) time and O(D) memory, read in chunks (a memory-mapped store is never loaded whole): for
    unit vectors u_i, the sum over i != j of u_i . u_j is |sum u_i|^2 - N. `centre` subtracts the mean row
    first. Zero rows (no direction) are left out; None when fewer than two rows remain.
    """
    mean = np.zeros(vectors.shape[1], dtype=np.float64)
    if centre:
        for start in range(0, len(vectors), CHUNK_ROWS):
            mean += np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float64).sum(axis=0)
        mean /= max(len(vectors), 1)
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    count = 0
    for start in range(0, len(vectors), CHUNK_ROWS):
        chunk = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float64) - mean
        norms = np.linalg.norm(chunk, axis=1)
        # relative to the vectors' scale: rounding leaves ~1e-16 residues when every row is the same
        keep = norms > 1e-9 * max(float(np.abs(mean).max(initial=0.0)), 1e-30) if centre else norms > 0
        total += (chunk[keep] / norms[keep, None]).sum(axis=0)
        count += int(keep.sum())
    if count < 2:
        return None
    return float((total @ total - count) / (count * (count - 1)))


def caption_diversity(
    table: pa.Table, prompt_ids: Sequence[str], features: np.ndarray | None = None
) -> list[PromptDiversity]:
    """Per prompt: captions, distinct captions and, given `features` (images x prompts x dim, in the store's
    prompt order), the raw and centred mean pairwise cosine."""
    counts = distinct_captions(table, prompt_ids)
    figures = []
    for column, prompt in enumerate(prompt_ids):
        raw = centred = None
        if features is not None:
            raw = mean_pairwise_cosine(features[:, column])
            centred = mean_pairwise_cosine(features[:, column], centre=True)
        figures.append(PromptDiversity(prompt, *counts[prompt], raw, centred))
    return figures
