"""Which dataset indices a rank reads in an epoch: a deterministic function of (seed, epoch, rank)."""

from __future__ import annotations

import numpy as np

from vlmkd.errors import InputError


def epoch_order(size: int, *, shuffle: bool, seed: int, epoch: int, world_size: int, drop_tail: bool) -> np.ndarray:
    """The epoch's global order, identical on every rank: a seeded permutation (or 0..size-1).

    With `drop_tail` the order is cut to a multiple of `world_size`, so every rank gets the same number
    of samples (as DistributedSampler with drop_last); the cut samples change from epoch to epoch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(size) if shuffle else np.arange(size)
    if drop_tail:
        order = order[: size - size % world_size]
    return order.astype(np.int64)


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s contiguous slice of an order of `size` samples (DALI's reader sharding)."""
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, {world_size}), got {rank}")
    return size * rank // world_size, size * (rank + 1) // world_size


def shard_indices(
    size: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, drop_tail: bool
) -> np.ndarray:
    """Dataset indices `rank` reads in `epoch`; the ranks' slices are disjoint and cover the epoch's order."""
    order = epoch_order(size, shuffle=shuffle, seed=seed, epoch=epoch, world_size=world_size, drop_tail=drop_tail)
    start, end = shard_bounds(order.size, rank, world_size)
    return order[start:end]


def shard_size(size: int, *, rank: int, world_size: int, drop_tail: bool) -> int:
    """How many images `rank` reads per epoch (the same every epoch)."""
    start, end = shard_bounds(size - size % world_size if drop_tail else size, rank, world_size)
    return end - start


def sample_seeds(indices: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """One augmentation seed per sample, from (seed, epoch, dataset index): independent of rank and workers."""
    base = np.random.default_rng([seed, epoch, 0x5EED]).integers(0, 2**62, dtype=np.int64)
    mixed = (np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(base)
    return (mixed >> np.uint64(2)).astype(np.int64)
