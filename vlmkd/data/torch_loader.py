"""The torch `DataLoader` path: PIL decoding, transforms and normalisation in worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from vlmkd.data.dataset import ImageList
from vlmkd.data.images import load_rgb
from vlmkd.data.sampling import sample_seeds, shard_indices, shard_size
from vlmkd.data.transforms import TransformSpec, apply_transform
from vlmkd.errors import InputError


class _Images(Dataset):
    """Maps (dataset index, augmentation seed) to (normalised float image (3, S, S), label, index).

    Normalising here, in the worker, keeps all pixel work out of the training process (whose OpenMP
    threads would otherwise spin against the workers for the CPU).
    """

    def __init__(self, dataset: ImageList, spec: TransformSpec) -> None:
        self.paths = [dataset.path(i) for i in range(len(dataset))]
        self.labels = dataset.labels()
        self.spec = spec
        self.shift = (255 * torch.tensor(spec.mean, dtype=torch.float32)).view(3, 1, 1)
        self.scale = (255 * torch.tensor(spec.std, dtype=torch.float32)).reciprocal().view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = key
        rng = np.random.default_rng(seed) if self.spec.train else None
        pixels = torch.from_numpy(apply_transform(load_rgb(self.paths[index]), self.spec, rng))
        return pixels.float().sub_(self.shift).mul_(self.scale), int(self.labels[index]), index


class _EpochSampler(Sampler):
    """Yields (index, augmentation seed) for this rank's slice of the current epoch.

    The sampler lives in the main process, so persistent workers see each new epoch.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int, world_size: int, drop_tail: bool) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.drop_tail = rank, world_size, drop_tail
        self.epoch = 0

    def indices(self) -> np.ndarray:
        return shard_indices(
            self.size,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_tail=self.drop_tail,
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.indices()
        seeds = sample_seeds(indices, seed=self.seed, epoch=self.epoch)
        return iter(zip(indices.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        return shard_size(self.size, rank=self.rank, world_size=self.world_size, drop_tail=self.drop_tail)


def _collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch; in a worker, `default_collate` stacks straight into shared memory."""
    images, labels, indices = default_collate(items)
    return images, labels, indices


class TorchImageBatches:
    """Batches of (images float32 (B, 3, S, S) normalised, labels int64, dataset indices int64)."""

    def __init__(
        self,
        dataset: ImageList,
        spec: TransformSpec,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
    ) -> None:
        self.sampler = _EpochSampler(
            len(dataset), shuffle=spec.train, seed=seed, rank=rank, world_size=world_size, drop_tail=spec.train
        )
        self.loader = DataLoader(
            _Images(dataset, spec),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        try:
            yield from self.loader
        except InputError as error:
            raise InputError(_worker_message(error)) from None


def _worker_message(error: InputError) -> str:
    """The one-line message a worker raised: torch re-raises it wrapped in the worker's traceback text."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    return text.rstrip().splitlines()[-1].split("InputError: ", 1)[-1]
