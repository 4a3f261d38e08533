"""Text-feature conditioning for training: remove what every caption shares, so the differences are what is learnt.

Sentence encoders are anisotropic: all-MiniLM-L6-v2 gives two captions that differ in one attribute word a
cosine of 0.97-0.99, so after L2 normalisation nearly all of a feature is the direction every caption
shares and the in-batch contrast starts from almost identical rows. Subtracting the training set's mean
feature (per prompt: each prompt's captions have their own common part) leaves the part that tells images
apart; optional ZCA whitening also equalises its directions. The result is scaled to a root-mean-square
norm of 1, so the adaptor's weights (not its bias) decide its output from the first step. All of it is a
fixed affine map computed once per run from the whole feature store, an exact reparametrisation of the
linear adaptor: it changes how the adaptor optimises, not what it can express.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmkd.errors import InputError

CENTERING = ("none", "all", "prompt")
_CHUNK = 8192  # images per pass over the memory-mapped store


@dataclass(frozen=True)
class TextConditioning:
    """`apply(features, columns)` = scale * (features - mean[columns]) @ whitening.

    `mean` is (P, D) over the store's prompts (rows equal when centring over all prompts, zero without
    centring); `whitening` is (D, D) or None; `scale` makes the mean squared norm of a conditioned
    training feature 1. `mean_cosine_before/after` is the mean cosine between two
    random training captions of one prompt before and after (what the contrast starts from).
    """

    center: str
    mean: np.ndarray
    whitening: np.ndarray | None
    scale: float
    mean_cosine_before: float
    mean_cosine_after: float

    def apply(self, features: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Condition float32 `features` (N, D) whose prompt column (index into the store) is `columns` (N,)."""
        out = features - self.mean[columns]
        if self.whitening is not None:
            out = out @ self.whitening
        return out * np.float32(self.scale)

    def arrays(self) -> dict[str, np.ndarray]:
        """The map as arrays (`mean`, `scale`, and `whitening` when on), as checkpoints store it."""
        arrays = {"mean": self.mean, "scale": np.array([self.scale], dtype=np.float64)}
        if self.whitening is not None:
            arrays["whitening"] = self.whitening
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], summary: dict) -> TextConditioning:
        """The conditioning that `arrays()` and `summary()` describe (read back from a checkpoint)."""
        whitening = arrays.get("whitening")
        return cls(
            center=str(summary["text_center"]),
            mean=np.asarray(arrays["mean"], dtype=np.float32),
            whitening=None if whitening is None else np.asarray(whitening, dtype=np.float32),
            scale=float(np.asarray(arrays["scale"]).reshape(-1)[0]),
            mean_cosine_before=float(summary.get("text_cosine_before", float("nan"))),
            mean_cosine_after=float(summary.get("text_cosine_after", float("nan"))),
        )

    def summary(self) -> dict[str, float | str | bool]:
        """What a run records about its conditioning (metrics.jsonl)."""
        return {
            "text_center": self.center,
            "text_whiten": self.whitening is not None,
            "text_cosine_before": round(self.mean_cosine_before, 4),
            "text_cosine_after": round(self.mean_cosine_after, 4),
            "text_scale": round(self.scale, 4),
        }


def text_conditioning(
    features: np.ndarray, center: str = "prompt", whiten: bool = False, columns: Sequence[int] | None = None
) -> TextConditioning:
    """Conditioning from a store's (N, P, D) `features`, using prompt columns `columns` (default: all).

    Means and covariance are accumulated in float64 over chunks of the memory map. Whitening is ZCA of the
    centred features with eigenvalues floored at 1e-3 of the largest, scaled so the mean squared norm of a
    whitened feature equals that of the centred one.
    """
    if center not in CENTERING:
        raise InputError(f"text centering must be one of {', '.join(CENTERING)}, got {center!r}")
    num_images, num_prompts, dim = features.shape
    used = np.arange(num_prompts) if columns is None else np.asarray(columns, dtype=np.int64)
    sums, squares = np.zeros((num_prompts, dim)), np.zeros(num_prompts)
    for start in range(0, num_images, _CHUNK):
        chunk = features[start : start + _CHUNK].astype(np.float64)
        sums += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=(0, 2))
    per_prompt = sums / num_images
    mean = np.zeros((num_prompts, dim))
    if center == "prompt":
        mean = per_prompt
    elif center == "all":
        mean = np.broadcast_to(per_prompt[used].mean(axis=0), (num_prompts, dim)).copy()
    whitening = None
    if whiten:
        covariance = np.zeros((dim, dim))
        for start in range(0, num_images, _CHUNK):
            chunk = features[start : start + _CHUNK][:, used].astype(np.float64) - mean[used]
            flat = chunk.reshape(-1, dim)
            covariance += flat.T @ flat
        covariance /= num_images * len(used)
        values, vectors = np.linalg.eigh(covariance)
        floored = np.maximum(values, 1e-3 * values.max())
        whitening = (vectors / np.sqrt(floored)) @ vectors.T
        whitening *= np.sqrt(np.trace(covariance) / dim)
    # Mean squared norm of (f - mean) over the used prompts: E|f|^2 - 2 mean.m + |mean|^2 per prompt.
    centred_square = squares[used] / num_images - 2 * (mean[used] * per_prompt[used]).sum(1) + (mean[used] ** 2).sum(1)
    scale = 1.0 / np.sqrt(max(float(centred_square.mean()), 1e-12))
    conditioning = TextConditioning(center, mean.astype(np.float32), _as_float32(whitening), scale, 0.0, 0.0)
    before, after = _mean_cosines(features, used, conditioning)
    return TextConditioning(center, conditioning.mean, conditioning.whitening, scale, before, after)


def _as_float32(matrix: np.ndarray | None) -> np.ndarray | None:
    return None if matrix is None else matrix.astype(np.float32)


def _mean_cosines(
    features: np.ndarray, used: np.ndarray, conditioning: TextConditioning, pairs: int = 2048
) -> tuple[float, float]:
    """Mean cosine between random pairs of distinct images' captions under one prompt, raw and conditioned."""
    rng = np.random.default_rng(0)
    num_images = features.shape[0]
    if num_images < 2:
        return 1.0, 1.0
    first = rng.integers(num_images, size=pairs)
    second = (first + rng.integers(1, num_images, size=pairs)) % num_images
    columns = used[rng.integers(len(used), size=pairs)]
    a = features[first, columns].astype(np.float32)
    b = features[second, columns].astype(np.float32)
    a_c, b_c = conditioning.apply(a, columns), conditioning.apply(b, columns)
    return _cosine(a, b), _cosine(a_c, b_c)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(((a * b).sum(axis=1) / norms).mean())
