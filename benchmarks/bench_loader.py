"""Loader throughput: the library's DALI path vs torch DataLoader + PIL, on the same files and worker count.

Cases: 224 px JPEG files -> 224 px train crops, and 32 px PNG files -> 32 px train crops (random-resized-
crop, flip, normalise). Rows: vlmkd's DALI path, vlmkd's torch path, a plain torchvision DataLoader
baseline (PIL + transforms in persistent workers), and a plain DALI pipeline for reference. Each loader
is built once. A round gives each loader in turn an untimed epoch and then a timed one, so every timed
epoch starts in steady state (DALI's queues full, workers up) and work a loader leaves running after
its epoch falls into the next loader's untimed epoch; rounds interleave loaders in rotating order
(shared machines are noisy) and best-of-N and the median are reported.

    python benchmarks/bench_loader.py            # writes benchmarks/results/loader.md
    python benchmarks/bench_loader.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import (
    Series,
    benchmark_parser,
    interleave,
    load_average,
    machine,
    markdown_table,
    rate_series,
    write_image_dataset,
    write_report,
)
from PIL import Image, ImageFilter

from vlmkd.data import IMAGENET_MEAN, IMAGENET_STD, ImageList, build_loader
from vlmkd.data.images import load_rgb

SCALE = (0.35, 1.0)


@dataclass(frozen=True)
class Case:
    """Files of one size and format, read at that size."""

    name: str
    image_px: int
    suffix: str
    num_images: int
    batch_size: int = 64
    workers: int = 2


@dataclass(frozen=True)
class Result:
    case: Case
    loader: str
    rates: Series  # images/s of each timed epoch


CASES = (Case("224 px JPEG", 224, "jpg", 2048), Case("32 px PNG", 32, "png", 8192))
BASELINE = "DataLoader + PIL (torchvision)"


def make_files(case: Case, root: Path) -> ImageList:
    """`case.num_images` smooth random RGB images (compress like photos, unlike white noise), 10 classes: 16
    blurred noise tiles in four rotations."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (case.image_px, case.image_px, 3), dtype=np.uint8) for _ in range(16)]
    tiles = [Image.fromarray(n).filter(ImageFilter.GaussianBlur(case.image_px / 64)) for n in noise]

    def tile(rng: np.random.Generator, k: int, size: int) -> Image.Image:
        return tiles[k % len(tiles)].rotate(90 * (k // len(tiles) % 4))

    return write_image_dataset(root, case.num_images, size=case.image_px, suffix=case.suffix, pixels=tile)


class _TorchvisionImages(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageList, transform: Callable) -> None:
        self.paths = [dataset.path(i) for i in range(len(dataset))]
        self.labels = dataset.labels().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.paths[index])), self.labels[index], index


def torchvision_baseline(dataset: ImageList, case: Case) -> Iterable:
    """The usual recipe: ImageFolder-like dataset, torchvision transforms on PIL images in workers."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(case.image_px, scale=SCALE),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return torch.utils.data.DataLoader(
        _TorchvisionImages(dataset, transform),
        batch_size=case.batch_size,
        shuffle=True,
        num_workers=case.workers,
        persistent_workers=True,
        drop_last=True,
    )


def plain_dali(dataset: ImageList, case: Case) -> Iterable:
    """A DALI pipeline written directly: readers.file + decoders.image + random_resized_crop + CMN."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    @pipeline_def(batch_size=case.batch_size, num_threads=case.workers, device_id=None, seed=0)
    def pipeline():
        encoded, labels = fn.readers.file(
            file_list=str(dataset.source), file_root=str(dataset.root), random_shuffle=True, name="reader"
        )
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        images = fn.random_resized_crop(images, size=(case.image_px, case.image_px), random_area=list(SCALE))
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255 * m for m in IMAGENET_MEAN],
            std=[255 * s for s in IMAGENET_STD],
            mirror=fn.random.coin_flip(),
        )
        return images, labels

    return DALIGenericIterator(
        [pipeline()],
        ["images", "labels"],
        reader_name="reader",
        last_batch_policy=LastBatchPolicy.DROP,
        auto_reset=True,
    )


def loaders_for(dataset: ImageList, case: Case) -> dict[str, Iterable]:
    def library(name: str) -> Iterable:
        return build_loader(
            dataset,
            loader=name,
            train=True,
            batch_size=case.batch_size,
            image_size=case.image_px,
            num_workers=case.workers,
            scale=SCALE,
        )

    return {
        "vlmkd dali": library("dali"),
        "vlmkd torch": library("torch"),
        BASELINE: torchvision_baseline(dataset, case),
        "plain DALI pipeline (reference)": plain_dali(dataset, case),
    }


def epoch_rate(loader: Iterable, epoch: int) -> float:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    start, images = time.perf_counter(), 0
    for batch in loader:
        first = batch[0] if isinstance(batch, list | tuple) else batch
        images += (first["images"] if isinstance(first, dict) else first).shape[0]
    return images / (time.perf_counter() - start)


def lead_in_then_timed_epoch(loader: Iterable) -> Callable[[], float]:
    """A row: an untimed epoch (steady state), then the images/s of the next one."""
    epochs = itertools.count()

    def one_round() -> float:
        epoch_rate(loader, next(epochs))
        return epoch_rate(loader, next(epochs))

    return one_round


def run_case(case: Case, reps: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="vlmkd-bench-") as tmp:
        loaders = loaders_for(make_files(case, Path(tmp)), case)
        rows = {name: lead_in_then_timed_epoch(loader) for name, loader in loaders.items()}
        rates = interleave(rows, rounds=reps, rotate=True)
        del loaders, rows
    return [Result(case, name, rate_series(values)) for name, values in rates.items()]


def table(results: list[Result], reps: int) -> str:
    import nvidia.dali

    lines = [
        "# Loader throughput (`benchmarks/bench_loader.py`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Files: synthetic smooth RGB images, 224x224 JPEG "
        "(quality 90) and 32x32 PNG, read at their own size with the train transform (random-resized-crop scale "
        f"{SCALE}, flip, normalise); batch 64, 2 worker processes / 2 DALI threads; {reps} rounds, each giving "
        "every loader (in rotating order) an untimed epoch then a timed one; images/s.",
        f"Machine: {machine()} (DALI decodes on the CPU without a GPU), DALI {nvidia.dali.__version__}. "
        f"**The machine was shared with other jobs (load average {load_average()} at the end)**: compare rows "
        "within a case, "
        "not across runs.",
        "",
    ]
    cells = []
    for case in dict.fromkeys(result.case for result in results):
        rows = [result for result in results if result.case == case]
        base = next(result for result in rows if result.loader == BASELINE).rates
        ours = next(result for result in rows if result.loader == "vlmkd torch").rates
        for result in rows:
            got = result.rates
            cells.append(
                [f"{case.name} ({case.num_images} files)", result.loader, f"{got.best:,.0f}", f"{got.median:,.0f}"]
                + [f"{got.best / b.best:.2f}x / {got.median / b.median:.2f}x" for b in (base, ours)]
            )
    header = ["case", "loader", "best img/s", "median img/s", "vs DataLoader + PIL (best / median)",
              "vs vlmkd torch (best / median)"]  # fmt: skip
    return "\n".join([*lines, markdown_table(header, cells, "llrrrr")]) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__, "small files and one rep; print, do not write")
    parser.add_argument("--reps", type=int, default=5, help="timed epochs per loader")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.md")
    args = parser.parse_args()
    cases = CASES
    if args.quick:
        cases = tuple(Case(c.name, c.image_px, c.suffix, 256) for c in CASES)
    results = [result for case in cases for result in run_case(case, 1 if args.quick else args.reps)]
    text = table(results, 1 if args.quick else args.reps)
    print(text)
    if not args.quick:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
