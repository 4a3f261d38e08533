"""Epoch orders and shards: disjoint, covering, equal-sized for training, reproducible."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmkd.data.sampling import epoch_order, sample_seeds, shard_indices, shard_size


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 9), st.booleans(), st.integers(0, 2**32), st.integers(0, 50))
def test_shards_partition_the_epoch_order(size: int, world_size: int, train: bool, seed: int, epoch: int) -> None:
    common = dict(shuffle=train, seed=seed, epoch=epoch, world_size=world_size, drop_tail=train)
    shards = [shard_indices(size, rank=rank, **common) for rank in range(world_size)]
    assert np.array_equal(np.concatenate(shards), epoch_order(size, **common))
    for rank, shard in enumerate(shards):
        assert shard.size == shard_size(size, rank=rank, world_size=world_size, drop_tail=train)
    joined = np.concatenate(shards)
    assert np.unique(joined).size == joined.size and joined.min(initial=0) >= 0 and joined.max(initial=0) < size
    if train:
        assert len({shard.size for shard in shards}) == 1 and joined.size == size - size % world_size
    else:
        assert np.array_equal(joined, np.arange(size))


def test_training_order_changes_with_epoch_and_seed_but_is_reproducible() -> None:
    def order(seed: int, epoch: int) -> np.ndarray:
        return epoch_order(50, shuffle=True, seed=seed, epoch=epoch, world_size=1, drop_tail=True)

    assert np.array_equal(order(1, 2), order(1, 2))
    assert not np.array_equal(order(1, 2), order(1, 3))
    assert not np.array_equal(order(1, 2), order(2, 2))


def test_augmentation_seeds_depend_on_index_and_epoch_only() -> None:
    indices = np.array([5, 0, 7, 3])
    seeds = sample_seeds(indices, seed=1, epoch=4)
    assert np.array_equal(seeds[[1, 3]], sample_seeds(indices[[1, 3]], seed=1, epoch=4))  # not on position
    assert np.unique(seeds).size == seeds.size and (seeds >= 0).all()
    assert not np.array_equal(seeds, sample_seeds(indices, seed=1, epoch=5))
