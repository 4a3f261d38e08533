"""CaptionFeatures: per-batch text features with one sampled prompt per image, or the mean over prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _cases import random_values, write_store

from vlmkd.encode.loader import CaptionFeatures
from vlmkd.errors import InputError

NUM_IMAGES, NUM_PROMPTS, DIM = 9, 4, 6
PROMPTS = ("P0", "P1", "P2", "P3")


@pytest.fixture
def store(tmp_path: Path):
    return write_store(tmp_path / "features", random_values((NUM_IMAGES, NUM_PROMPTS, DIM)))


@pytest.mark.parametrize("prompts", [None, ("P2",), ("P3", "P0")])
def test_mean_mix_is_the_average_over_the_chosen_prompts(store, prompts) -> None:
    indices = torch.tensor([4, 0, 8, 4])
    got = CaptionFeatures(store, mix="mean", prompts=prompts)(indices)
    columns = [PROMPTS.index(p) for p in (prompts or PROMPTS)]
    stored = np.asarray(store.features, dtype=np.float64)
    expected = np.stack([sum(stored[i, c] for c in columns) / len(columns) for i in indices.tolist()])
    assert got.dtype == torch.float32 and got.shape == (4, DIM)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prompts", [None, ("P1", "P3")])
def test_sample_mix_draws_each_row_from_one_chosen_prompt_of_that_image(store, prompts) -> None:
    chosen = [PROMPTS.index(p) for p in (prompts or PROMPTS)]
    features = CaptionFeatures(store, prompts=prompts)
    indices = torch.arange(NUM_IMAGES).repeat(50)
    rows = features(indices, torch.Generator().manual_seed(1)).numpy()
    stored = np.asarray(store.features, dtype=np.float32)
    drawn = []
    for index, row in zip(indices.tolist(), rows, strict=True):
        matches = [p for p in range(NUM_PROMPTS) if np.array_equal(stored[index, p], row)]
        assert len(matches) == 1
        drawn.append(matches[0])
    assert sorted(set(drawn)) == chosen  # every chosen prompt is drawn, no other ever is


def test_sample_mix_is_reproducible_from_the_generator_and_varies_between_steps(store) -> None:
    features = CaptionFeatures(store)
    indices = torch.arange(NUM_IMAGES)
    first = features(indices, torch.Generator().manual_seed(7))
    again = features(indices, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    steps = [features(indices, generator) for _ in range(3)]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not all(torch.equal(steps[0], step) for step in steps[1:])


def test_empty_batch_and_dim(store) -> None:
    features = CaptionFeatures(store, mix="mean")
    assert features.dim == DIM
    assert features(torch.zeros(0, dtype=torch.long)).shape == (0, DIM)


@pytest.mark.parametrize(
    ("mix", "prompts", "message"),
    [
        ("sample", ("P9",), r"unknown \['P9'\]"),
        ("sample", (), "none given"),
        ("mean", ("P1", "P1"), "repeated ids"),
        ("median", None, "caption mix must be one of sample, mean"),
    ],
)
def test_bad_mix_or_prompt_subset_is_refused(store, mix, prompts, message: str) -> None:
    with pytest.raises(InputError, match=message):
        CaptionFeatures(store, mix=mix, prompts=prompts)


def test_index_outside_the_store_is_refused(store) -> None:
    with pytest.raises(IndexError, match=f"dataset index {NUM_IMAGES} is outside"):
        CaptionFeatures(store)(torch.tensor([0, NUM_IMAGES]))
