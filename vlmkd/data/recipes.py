"""The long-tail benchmarks of the literature as vlmkd dataset folders, built from data the user already has.

- CIFAR-10-LT / CIFAR-100-LT: the official python-pickle archives cut with the LDAM-DRW exponential profile
  (`vlmkd.data.cifar`), written as PNGs with `train.txt` (long tail) and `test.txt` (the balanced test set).
- ImageNet-LT, Places-LT (Liu et al. 2019, OLTR) and iNaturalist 2018: their published split files, read
  from a local folder and rewritten as vlmkd list files whose paths go through an `images` link to the
  image root, so the folder is a self-contained dataset for every stage (and DALI's file reader).

Each output folder holds `recipe.json` (what was built from what); building the same recipe into a folder
that already holds it is a no-op, and a folder holding something else is refused.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vlmkd.atomic_files import write_bytes_atomic, write_text_atomic
from vlmkd.data.cifar import find_cifar, ldam_counts, ldam_indices
from vlmkd.data.dataset import CLASSNAMES_FILE, ImageList, load_image_list
from vlmkd.data.listfile import lines_of, parse_list_line, safe_relative_path, write_classnames, write_list_file
from vlmkd.errors import InputError
from vlmkd.folder_kind import RECIPE_RECORD, reuse_recorded

RECIPE_FILE = RECIPE_RECORD
IMAGES_LINK = "images"


@dataclass(frozen=True)
class BuiltDataset:
    """A dataset folder made by a recipe: its splits by name (train, test, maybe val), loaded."""

    root: Path
    splits: dict[str, ImageList]
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ CIFAR-LT


def make_cifar_lt(
    source: Path,
    out_dir: Path,
    *,
    dataset: str | None = None,
    imbalance_factor: float = 100.0,
    seed: int = 0,
    progress: bool = True,
) -> BuiltDataset:
    """Write CIFAR-10-LT or CIFAR-100-LT to `out_dir` from the python-pickle CIFAR data at `source`.

    The training split keeps `ldam_counts(5000 or 500, C, imbalance_factor)` images per class, chosen as
    LDAM-DRW's `IMBALANCECIFAR` chooses them with `rand_number=seed`; the test split is the full balanced
    CIFAR test set (10,000 images), as in the literature.
    """
    cifar = find_cifar(Path(source), dataset)
    layout = cifar.layout
    settings = {
        "recipe": f"{layout.name}_lt",
        "source": f"{layout.archive} / {layout.folder}",
        "convention": "LDAM-DRW (Cao et al. 2019): n_i = int(n_max * (1/IF)^(i/(C-1))), numpy RandomState(seed)",
        "imbalance_factor": float(imbalance_factor),
        "seed": int(seed),
    }
    out_dir = Path(out_dir)
    if not _reuse(out_dir, settings):
        train, test = cifar.split(train=True), cifar.split(train=False)
        max_count = int(np.bincount(train.labels, minlength=layout.num_classes).max())
        counts = ldam_counts(max_count, layout.num_classes, imbalance_factor)
        kept = ldam_indices(train.labels, counts, seed)
        folders = [name.replace(" ", "_") for name in train.classnames]

        def write(staging: Path) -> None:
            for split, images, labels, indices in (
                ("train", train.images, train.labels, kept),
                ("test", test.images, test.labels, np.arange(len(test.labels))),
            ):
                entries = []
                for index in tqdm(indices, desc=f"{layout.name} {split}", disable=not progress, leave=False):
                    relative = f"{split}/{folders[labels[index]]}/{index:05d}.png"
                    _write_png(staging / relative, images[index])
                    entries.append((relative, int(labels[index])))
                write_list_file(staging / f"{split}.txt", entries)
            write_classnames(staging / CLASSNAMES_FILE, [name.replace("_", " ") for name in train.classnames])

        _build(out_dir, settings | {"train_counts": counts}, write)
    return _open(out_dir, ("train", "test"))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue(), durable=False)


# ------------------------------------------------------------------------------------------------ list-file benchmarks


@dataclass(frozen=True)
class ListRecipe:
    """A benchmark published as split files: which file holds which split, and how class names are found."""

    name: str
    title: str
    splits: dict[str, tuple[str, ...]]  # split -> candidate file names (list files or COCO-style JSON)
    num_classes: int
    classname: Callable[[str], str | None]  # name of a class from one of its training paths (None: unknown)
    source: str


def _imagenet_classname(path: str) -> str | None:
    wnid = next((part for part in path.split("/") if re.fullmatch(r"n\d{8}", part)), None)
    if wnid is None:
        return None
    description = _imagenet_descriptions().get(wnid)
    return description.split(",")[0].strip() if description else wnid


@functools.cache
def _imagenet_descriptions() -> dict[str, str]:
    """WordNet id -> "tench, Tinca tinca" for the 1000 ImageNet-1k classes, from timm's bundled tables (if any)."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return {}
    return dict(ImageNetInfo().label_descriptions(as_dict=True))


def _places_classname(path: str) -> str | None:
    # data_256/a/apartment_building/outdoor/00000001.jpg -> "apartment building outdoor"
    folders = path.split("/")[:-1]
    letter = next((i for i, part in enumerate(folders) if len(part) == 1 and part.isalpha()), None)
    parts = folders[letter + 1 :] if letter is not None else folders[-1:]
    return " ".join(parts).replace("_", " ") or None


def _inat_classname(path: str) -> str | None:
    # train_val2018/Plantae/7477/<hash>.jpg -> "Plantae 7477" (species names come from a JSON's categories)
    folders = path.split("/")[:-1]
    return " ".join(folders[-2:]) if len(folders) >= 2 else None


LIST_RECIPES: dict[str, ListRecipe] = {
    "imagenet-lt": ListRecipe(
        "imagenet-lt",
        "ImageNet-LT",
        {
            "train": ("ImageNet_LT_train.txt",),
            "val": ("ImageNet_LT_val.txt",),
            "test": ("ImageNet_LT_test.txt",),
        },
        1000,
        _imagenet_classname,
        "Liu et al. 2019 (OLTR) split files; images from ILSVRC-2012 (train/ and val/ in synset folders)",
    ),
    "places-lt": ListRecipe(
        "places-lt",
        "Places-LT",
        {"train": ("Places_LT_train.txt",), "val": ("Places_LT_val.txt",), "test": ("Places_LT_test.txt",)},
        365,
        _places_classname,
        "Liu et al. 2019 (OLTR) split files; images from Places365-Standard (data_256/, val_256/)",
    ),
    "inat2018": ListRecipe(
        "inat2018",
        "iNaturalist 2018",
        {
            "train": ("iNaturalist18_train.txt", "train2018.json"),
            "test": ("iNaturalist18_val.txt", "val2018.json"),  # the literature reports on the official val set
        },
        8142,
        _inat_classname,
        "Van Horn et al. 2018: the official train2018.json / val2018.json (COCO style), or the list files "
        "of Kang et al. 2020 (decoupling); images under train_val2018/",
    ),
}


def make_list_recipe(
    name: str, lists_dir: Path, images_root: Path, out_dir: Path, *, check_files: bool = True, progress: bool = True
) -> BuiltDataset:
    """Write benchmark `name` (imagenet-lt, places-lt, inat2018) to `out_dir` from its split files in
    `lists_dir` and its images under `images_root` (linked as `out_dir/images`, never copied).

    `check_files` checks that every listed image exists before anything is written.
    """
    if name not in LIST_RECIPES:
        raise InputError(f"recipe must be one of {', '.join(LIST_RECIPES)}, got {name!r}")
    recipe = LIST_RECIPES[name]
    lists_dir, images_root, out_dir = Path(lists_dir), Path(images_root), Path(out_dir)
    if not images_root.is_dir():
        raise InputError(f"{images_root}: image root not found (a directory)")
    files = {split: _find_split_file(lists_dir, candidates) for split, candidates in recipe.splits.items()}
    settings = {
        "recipe": name,
        "source": recipe.source,
        "split_files": {split: path.name for split, path in files.items()},
        "images": str(images_root.resolve()),
    }
    if _reuse(out_dir, settings):
        return _open(out_dir, tuple(files))
    entries: dict[str, list[tuple[str, int]]] = {}
    json_names: dict[int, str] = {}
    for split, path in files.items():
        entries[split], names = _read_split(path)
        json_names.update(names)
    labels = sorted({label for split in entries.values() for _, label in split})
    train_labels = {label for _, label in entries["train"]}
    unseen = sorted(set(labels) - train_labels)
    if unseen:
        raise InputError(f"{files['train']}: classes {unseen[:5]} appear in other splits but not in training")
    # Labels become 0..C-1 in the order of the published ids (already contiguous in every benchmark here).
    index = {label: k for k, label in enumerate(labels)}
    if check_files:
        _check_images(images_root, entries, progress)
    classnames = _classnames(recipe, entries["train"], json_names, labels)
    notes = []
    if len(labels) != recipe.num_classes:
        notes.append(f"{recipe.title} has {recipe.num_classes} classes; these split files hold {len(labels)}")

    def write(staging: Path) -> None:
        os.symlink(images_root.resolve(), staging / IMAGES_LINK, target_is_directory=True)
        for split, split_entries in entries.items():
            rewritten = [(f"{IMAGES_LINK}/{path}", index[label]) for path, label in split_entries]
            write_list_file(staging / f"{split}.txt", rewritten)
        write_classnames(staging / CLASSNAMES_FILE, classnames)

    _build(out_dir, settings, write)
    built = _open(out_dir, tuple(files))
    return BuiltDataset(built.root, built.splits, tuple(notes))


def _find_split_file(lists_dir: Path, candidates: tuple[str, ...]) -> Path:
    for candidate in candidates:
        if (lists_dir / candidate).is_file():
            return lists_dir / candidate
    raise InputError(f"{lists_dir}: none of {', '.join(candidates)} found")


def _read_split(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """(entries, class names by label) of one split file: a `path label` list or a COCO-style JSON."""
    if path.suffix == ".json":
        return _read_coco_json(path)
    try:
        lines = lines_of(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read split file ({error})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        # Some published lists write root-relative paths with a leading slash: they are relative to the image root.
        parsed = parse_list_line(line.strip().lstrip("/"), f"{path}:{number}")
        if parsed is not None:
            entries.append(parsed)
    if not entries:
        raise InputError(f"{path}: split file has no entries")
    return entries, {}


def _read_coco_json(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """iNaturalist's COCO-style annotation file: images[id, file_name], annotations[image_id, category_id],
    categories[id, name]."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
        names = {int(c["id"]): str(c["name"]) for c in data.get("categories", []) if "name" in c}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read annotation JSON ({error})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: not a COCO-style annotation file (images/annotations: {error})") from None
    entries = []
    for image_id, label in annotations:
        if image_id not in files:
            raise InputError(f"{path}: annotation for unknown image id {image_id}")
        if label < 0:
            raise InputError(f"{path}: image {image_id} has negative category id {label}")
        entries.append((safe_relative_path(files[image_id].lstrip("/"), f"{path}: image {image_id}"), label))
    if not entries:
        raise InputError(f"{path}: annotation file has no annotated images")
    return entries, names


def _check_images(root: Path, entries: dict[str, list[tuple[str, int]]], progress: bool) -> None:
    total = sum(len(split) for split in entries.values())
    with tqdm(total=total, desc="checking images", disable=not progress, leave=False) as bar:
        for split, split_entries in entries.items():
            missing = [path for path, _ in split_entries if not (root / path).is_file()]
            bar.update(len(split_entries))
            if missing:
                raise InputError(
                    f"{root}: {len(missing)} of the {len(split_entries)} {split} images are missing, "
                    f"e.g. {root / missing[0]} (is this the right image root?)"
                )


def _classnames(
    recipe: ListRecipe, train: list[tuple[str, int]], json_names: dict[int, str], labels: list[int]
) -> list[str]:
    first_path: dict[int, str] = {}
    for path, label in train:
        first_path.setdefault(label, path)
    names = []
    for label in labels:
        name = json_names.get(label) or recipe.classname(first_path[label]) or f"class_{label}"
        names.append(" ".join(name.split()))
    return names


# ------------------------------------------------------------------------------------------------ folders


def _reuse(out_dir: Path, settings: dict) -> bool:
    """True if `out_dir` holds this recipe already; an error if it holds anything else."""
    return reuse_recorded(
        out_dir, RECIPE_FILE, settings, stage="vlmkd recipe folder", what="recipe record", recorded_keys=True
    )


def _build(out_dir: Path, settings: dict, write: Callable[[Path], None]) -> None:
    """Run `write` into a staging folder beside `out_dir`, add `recipe.json`, then rename it into place."""
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        write_text_atomic(staging / RECIPE_FILE, json.dumps(settings, indent=1) + "\n", durable=False)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty: `_reuse` refused anything else
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open(out_dir: Path, splits: tuple[str, ...]) -> BuiltDataset:
    return BuiltDataset(out_dir, {split: load_image_list(out_dir / f"{split}.txt") for split in splits})
