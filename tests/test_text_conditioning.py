"""Text-feature conditioning: per-prompt / global centring and ZCA whitening against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cases import write_store

from vlmkd.encode.conditioning import text_conditioning
from vlmkd.encode.loader import CaptionFeatures
from vlmkd.errors import InputError


def anisotropic(shape=(40, 3, 6), seed=0) -> np.ndarray:
    """Unit rows sharing one big common direction (and a per-prompt offset), like a sentence encoder's."""
    rng = np.random.default_rng(seed)
    values = 3.0 + 0.3 * rng.standard_normal(shape)
    values[..., 0] += 10.0
    values += np.arange(shape[1])[None, :, None] * 0.5
    return (values / np.linalg.norm(values, axis=-1, keepdims=True)).astype(np.float16).astype(np.float32)


def test_prompt_centring_subtracts_each_prompts_mean_and_all_centring_the_mean_of_means() -> None:
    values = anisotropic()
    per_prompt = text_conditioning(values, "prompt")
    np.testing.assert_allclose(per_prompt.mean, values.mean(axis=0), atol=1e-6)
    columns = np.array([0, 1, 2, 1])
    np.testing.assert_allclose(
        per_prompt.apply(values[:4, columns][np.arange(4), np.arange(4)], columns),
        per_prompt.scale * (values[np.arange(4), columns] - values.mean(axis=0)[columns]),
        atol=1e-5,
    )
    centred = values - values.mean(axis=0)
    assert per_prompt.scale == pytest.approx(1 / np.sqrt((centred**2).sum(-1).mean()), rel=1e-5)
    overall = text_conditioning(values, "all", columns=[0, 2])
    np.testing.assert_allclose(overall.mean, np.tile(values[:, [0, 2]].mean(axis=(0, 1)), (3, 1)), atol=1e-6)
    assert not text_conditioning(values, "none").mean.any()
    # The point of it: raw captions of two images are nearly parallel, centred ones are not.
    assert per_prompt.mean_cosine_before > 0.9
    assert abs(per_prompt.mean_cosine_after) < 0.2


def test_whitening_makes_the_centred_covariance_isotropic_at_unit_mean_squared_norm() -> None:
    values = anisotropic((400, 2, 5))
    conditioning = text_conditioning(values, "prompt", whiten=True)
    columns = np.repeat([[0, 1]], 400, axis=0).reshape(-1)
    centred = values.reshape(-1, 5) - values.mean(axis=0)[columns]
    whitened = conditioning.apply(values.reshape(-1, 5), columns)
    covariance = whitened.T @ whitened / len(whitened)
    np.testing.assert_allclose(covariance, np.eye(5) / 5, atol=0.01)
    assert conditioning.scale == pytest.approx(1 / np.sqrt((centred**2).sum(-1).mean()), rel=1e-4)


def test_caption_features_apply_the_conditioning_in_both_mixes(tmp_path) -> None:
    values = anisotropic((9, 3, 6))
    store = write_store(tmp_path / "store", values)
    stored = store.features.astype(np.float32)
    conditioning = text_conditioning(store.features, "prompt", whiten=True)
    indices = torch.tensor([4, 0, 8])
    mean = CaptionFeatures(store, mix="mean", prompts=("P0", "P2"), conditioning=conditioning)(indices)
    expected = np.stack([conditioning.apply(stored[i, [0, 2]], np.array([0, 2])).mean(axis=0) for i in (4, 0, 8)])
    np.testing.assert_allclose(mean.numpy(), expected, atol=1e-5)
    generator = torch.Generator().manual_seed(3)
    sampled = CaptionFeatures(store, conditioning=conditioning)(indices, generator)
    raw = CaptionFeatures(store)(indices, torch.Generator().manual_seed(3))
    columns = [int(np.flatnonzero((stored[i] == raw[k].numpy()).all(axis=1))[0]) for k, i in enumerate((4, 0, 8))]
    np.testing.assert_allclose(sampled.numpy(), conditioning.apply(raw.numpy(), np.array(columns)), atol=1e-5)


def test_unknown_centring_is_refused() -> None:
    with pytest.raises(InputError, match="text centering must be one of"):
        text_conditioning(anisotropic(), "median")
