"""Loaders yielding (images, labels, dataset indices): a torch DataLoader path and a DALI path.

Both read the same files in the same order for a given (seed, epoch, rank) and share the transform
definitions of `vlmkd.data.transforms`, so captions and features line up with the images either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from vlmkd.data.dataset import ImageList
from vlmkd.data.sampling import shard_size
from vlmkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LOADERS", "ImageBatches", "build_loader"]
from vlmkd.errors import InputError
from vlmkd.registry import Registry

if TYPE_CHECKING:
    import torch  # the loaders import it when built, so `vlmkd data` commands start fast


class ImageBatches(Protocol):
    """What both loaders return."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images (B, 3, H, W) float32 normalised, labels int64 (B,), dataset indices int64 (B,))."""
        ...

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: order and augmentation are a deterministic function of (seed, epoch, rank)."""
        ...


LOADERS: Registry[Callable[..., ImageBatches]] = Registry("loader")
LOADERS.register("torch", "vlmkd.data.torch_loader:TorchImageBatches", "torch DataLoader, PIL decoding")
LOADERS.register("dali", "vlmkd.data.dali_loader:DaliImageBatches", "NVIDIA DALI (GPU decoding where there is one)")


def build_loader(
    dataset: ImageList,
    *,
    loader: str = "torch",
    train: bool,
    batch_size: int,
    image_size: int,
    num_workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    flip: bool = True,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> ImageBatches:
    """Batches of `dataset` for this rank.

    train=True: a fresh seeded permutation each epoch, random-resized-crop (area fraction `scale`,
    aspect ratio `ratio`), horizontal flip if `flip`, normalise with `mean`/`std`; drop_last defaults
    to True and the order is cut to a multiple of `world_size`. train=False: dataset order, the central
    square resized to `image_size` (resize shorter side + centre crop), normalise; every image is read
    exactly once over all ranks. `num_workers` is the worker processes (torch) or threads (DALI). The
    DALI path decodes on the GPU (`device="mixed"`) when CUDA is available and yields images there.
    """
    if batch_size < 1 or image_size < 1 or num_workers < 0 or world_size < 1 or seed < 0:
        raise InputError(
            f"batch_size, image_size and world_size must be >= 1, num_workers and seed >= 0; got "
            f"{batch_size}, {image_size}, {world_size}, {num_workers}, {seed}"
        )
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, {world_size}), got {rank}")
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise InputError(f"scale must satisfy 0 < lo <= hi <= 1 and ratio 0 < lo <= hi; got {scale}, {ratio}")
    if shard_size(len(dataset), rank=rank, world_size=world_size, drop_tail=train) == 0:
        raise InputError(f"a dataset of {len(dataset)} images leaves rank {rank} of {world_size} without any image")
    spec = TransformSpec(
        train=train, image_size=image_size, flip=flip, scale=scale, ratio=ratio, mean=tuple(mean), std=tuple(std)
    )
    options = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=train if drop_last is None else drop_last,
    )
    return LOADERS.get(loader)(dataset, spec, **options)
