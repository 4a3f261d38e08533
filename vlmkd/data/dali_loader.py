"""The DALI path: `fn.readers.file` over a per-epoch file list, decoding on the GPU ("mixed") or the CPU.

DALI comes as one wheel per CUDA major version, `nvidia-dali-cuda120` and `nvidia-dali-cuda130`, both installing
the package `nvidia.dali`; whichever is installed is used (`installed_dali`), after checking that this machine's
NVIDIA driver can run it (`driver_cuda_version`). `vlmkd info` prints `dali_summary()`.

The file list holds `relative/path dataset_index` lines in the epoch's global order (the same order the
torch path uses); the reader shards it by rank (`shard_id`/`num_shards`) and its "label" output carries
dataset indices, from which labels are looked up. The pipeline is rebuilt each epoch with a seed drawn
from (seed, epoch, rank), so order and augmentation are reproducible after a restart.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
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


# The DALI wheels vlmkd knows: distribution -> the CUDA major version it is built for, and the oldest driver that
# runs it (DALI's installation guide: built with "CUDA toolkit enhanced compatibility", they run on any driver for
# CUDA 12.0 / 13.0 or later).
DALI_BUILDS = {"nvidia-dali-cuda120": 12, "nvidia-dali-cuda130": 13}
OLDEST_DRIVER = {12: "525.60", 13: "580"}
EXTRA = {12: "dali-cuda12", 13: "dali-cuda13"}
INSTALL_HINT = "pip install 'vlmkd[dali-cuda13]' (NVIDIA driver 580 or newer) or 'vlmkd[dali-cuda12]' (525.60 or newer)"


@dataclass(frozen=True)
class DaliBuild:
    """An installed DALI wheel: its distribution name, version, and the CUDA major version it is built for."""

    distribution: str
    version: str
    cuda: int

    def describe(self) -> str:
        return (f"{self.distribution} {self.version} (built for CUDA {self.cuda}, needs an NVIDIA driver "
                f"{OLDEST_DRIVER[self.cuda]} or newer)")  # fmt: skip


def installed_dali() -> DaliBuild | None:
    """The DALI wheel installed here, or None. Two at once overwrite each other's files (they share the package
    `nvidia.dali`): a `MissingDependencyError` says to uninstall one."""
    found = []
    for distribution, cuda in DALI_BUILDS.items():
        try:
            found.append(DaliBuild(distribution, importlib.metadata.version(distribution), cuda))
        except importlib.metadata.PackageNotFoundError:
            continue
    if len(found) > 1:
        names = " and ".join(build.distribution for build in found)
        raise MissingDependencyError(
            f"both {names} are installed; they install the same nvidia.dali package over each other: keep the one "
            f"for this machine's driver (docs/data.md, choosing the DALI wheel), e.g. pip uninstall -y {names}, then "
            f"{INSTALL_HINT}"
        )
    return found[0] if found else None


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version this machine's NVIDIA driver supports (`cuDriverGetVersion`), or None without one."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, version.value % 1000 // 10


def check_driver(build: DaliBuild, driver: tuple[int, int] | None) -> None:
    """Refuse a DALI build this machine's driver cannot run (None: no driver, DALI then runs on the CPU)."""
    if driver is not None and driver[0] < build.cuda:
        other = max((cuda for cuda in DALI_BUILDS.values() if cuda <= driver[0]), default=None)
        fix = (f"pip uninstall -y {build.distribution} && pip install 'vlmkd[{EXTRA[other]}]'" if other else
               "update the NVIDIA driver")  # fmt: skip
        raise MissingDependencyError(
            f"{build.distribution} needs an NVIDIA driver for CUDA {build.cuda}.0 or newer "
            f"({OLDEST_DRIVER[build.cuda]}+); this machine's driver supports CUDA {driver[0]}.{driver[1]}: {fix}"
        )


def dali_summary() -> str:
    """One line for `vlmkd info`: the DALI wheel installed, and whether this machine's driver runs it."""
    try:
        build = installed_dali()
    except MissingDependencyError as error:
        return f"DALI: broken install: {error}"
    if build is None:
        return f"DALI: not installed (--loader dali needs it: {INSTALL_HINT})"
    driver = driver_cuda_version()
    if driver is None:
        return f"DALI: {build.describe()}; no NVIDIA driver here: DALI decodes on the CPU"
    try:
        check_driver(build, driver)
    except MissingDependencyError as error:
        return f"DALI: {build.describe()}; NOT usable here: {error}"
    return f"DALI: {build.describe()}; driver supports CUDA {driver[0]}.{driver[1]}: usable"


def import_dali() -> Any:
    """The `nvidia.dali` module of whichever DALI wheel is installed, or a MissingDependencyError saying what to
    install (none installed, both installed, or one this machine's driver cannot run)."""
    build = installed_dali()
    if build is None:
        raise MissingDependencyError(f"--loader dali needs NVIDIA DALI: {INSTALL_HINT}; or use --loader torch")
    if torch.cuda.is_available():
        check_driver(build, driver_cuda_version())
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401  (the iterator lives there)
    except ImportError as error:
        raise MissingDependencyError(
            f"--loader dali: {build.distribution} is installed but nvidia.dali does not import ({error}); "
            f"reinstall it: pip install --force-reinstall {build.distribution}"
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
