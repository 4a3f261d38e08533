"""The DALI path: `fn.readers.file` over a per-epoch file list, decoding on the GPU ("mixed") or the CPU.

The file list holds `relative/path dataset_index` lines in the epoch's global order (the same order the
torch path uses); the reader shards it by rank (`shard_id`/`num_shards`) and its "label" output carries
dataset indices, from which labels are looked up. The pipeline is rebuilt each epoch with a seed drawn
from (seed, epoch, rank), so order and augmentation are reproducible after a restart.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.data.dataset import ImageList
from vlmkd.data.images import check_dali_decodable
from vlmkd.data.sampling import epoch_order, shard_size
from vlmkd.data.transforms import TransformSpec
from vlmkd.errors import MissingDependencyError

READER = "reader"


def import_dali() -> Any:
    """The `nvidia.dali` module, or a MissingDependencyError saying how to install it."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401  (the iterator lives there)
    except ImportError as error:
        raise MissingDependencyError(
            f"--loader dali needs NVIDIA DALI ({error}); install it with `pip install 'vlmkd[dali]'` "
            "(nvidia-dali-cuda130) or use --loader torch"
        ) from None
    return nvidia.dali


def dali_device() -> int | None:
    """CUDA device for DALI's mixed decoder, or None to run the whole pipeline on the CPU."""
    return torch.cuda.current_device() if torch.cuda.is_available() else None


def _pipeline(
    list_file: Path,
    root: Path,
    spec: TransformSpec,
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
    shard_id: int,
    num_shards: int,
) -> Any:
    dali = import_dali()
    fn, types = dali.fn, dali.types

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        encoded, indices = fn.readers.file(
            file_list=str(list_file),
            file_root=str(root),
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=False,
            name=READER,
        )
        device = "cpu" if device_id is None else "mixed"
        images = fn.decoders.image(encoded, device=device, output_type=types.RGB, adjust_orientation=True)
        size = (spec.image_size, spec.image_size)
        if spec.train:
            images = fn.random_resized_crop(
                images, size=size, random_area=list(spec.scale), random_aspect_ratio=list(spec.ratio)
            )
        else:
            shape = fn.peek_image_shape(encoded, dtype=types.FLOAT)
            height, width = shape[0], shape[1]
            side = dali.math.min(height, width)
            top, left = (height - side) * 0.5, (width - side) * 0.5
            images = fn.resize(
                images, size=size, roi_start=fn.stack(top, left), roi_end=fn.stack(top + side, left + side)
            )
        mirror = fn.random.coin_flip(probability=0.5) if spec.train and spec.flip else 0
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255 * m for m in spec.mean],
            std=[255 * s for s in spec.std],
            mirror=mirror,
        )
        return images, indices

    return pipeline()


class DaliImageBatches:
    """Batches of (images float32 (B, 3, S, S) normalised, labels int64, dataset indices int64) from DALI."""

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
        import_dali()
        check_dali_decodable(dataset.path(i) for i in range(len(dataset)))  # same pixels as the torch loader
        self.dataset, self.spec = dataset, spec
        self.batch_size, self.num_threads = batch_size, max(1, num_workers)
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.labels = torch.from_numpy(dataset.labels())
        self.epoch = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="vlmkd-dali-"))
        weakref.finalize(self, shutil.rmtree, self.workdir, True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        size = shard_size(len(self.dataset), rank=self.rank, world_size=self.world_size, drop_tail=self.spec.train)
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def _start(self, epoch: int) -> Any:
        """Build the epoch's pipeline and iterator (~20 ms; the iterator waits for the first batch)."""
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        order = epoch_order(
            len(self.dataset),
            shuffle=self.spec.train,
            seed=self.seed,
            epoch=epoch,
            world_size=self.world_size,
            drop_tail=self.spec.train,
        )
        samples = self.dataset.samples
        list_file = self.workdir / f"epoch{epoch}.txt"
        list_file.write_text("".join(f"{samples[i].path} {i}\n" for i in order.tolist()), encoding="utf-8")
        state = np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0]
        pipeline = _pipeline(
            list_file,
            self.dataset.root,
            self.spec,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=dali_device(),
            seed=int(state & 0x7FFFFFFF),
            shard_id=self.rank,
            num_shards=self.world_size,
        )
        try:
            return DALIGenericIterator(
                [pipeline],
                ["images", "indices"],
                reader_name=READER,
                last_batch_policy=LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL,
                auto_reset=False,
            )
        finally:
            list_file.unlink(missing_ok=True)  # the reader parsed it while the pipeline was built

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if len(self) == 0:
            return  # DALI refuses a shard smaller than one batch when the partial batch is dropped
        for (batch,) in self._start(self.epoch):
            if batch["indices"].shape[0] == 0:
                continue  # DALI gives every rank as many batches as the largest shard; skip the empty one
            indices = batch["indices"].reshape(-1).to(torch.int64).cpu()
            yield batch["images"], self.labels[indices], indices
