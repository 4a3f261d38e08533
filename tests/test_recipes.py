"""ImageNet-LT, Places-LT and iNaturalist 2018 from their published split files, and the training presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.cli import main as vlmkd_main
from vlmkd.data.recipes import make_list_recipe
from vlmkd.errors import InputError
from vlmkd.train.config import list_presets, read_config_file, resolve_config


def _images(root: Path, paths: list[str]) -> None:
    rng = np.random.default_rng(0)
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / path, format="JPEG")


def _write_lists(folder: Path, files: dict[str, list[tuple[str, int]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, entries in files.items():
        (folder / name).write_text("".join(f"{path} {label}\n" for path, label in entries))


@pytest.fixture
def imagenet_lt(tmp_path) -> tuple[Path, Path, dict]:
    """ImageNet-LT in its published form: `train/<wnid>/<wnid>_N.JPEG label` lines relative to ILSVRC-2012."""
    wnids = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark: labels 0, 1, 2
    train = [(f"train/{w}/{w}_{i}.JPEG", k) for k, w in enumerate(wnids) for i in range(4 - k)]
    val = [(f"train/{w}/{w}_9{k}.JPEG", k) for k, w in enumerate(wnids)]
    test = [(f"val/{w}/ILSVRC2012_val_0000000{k}.JPEG", k) for k, w in enumerate(wnids)]
    files = {"ImageNet_LT_train.txt": train, "ImageNet_LT_val.txt": val, "ImageNet_LT_test.txt": test}
    _write_lists(tmp_path / "lists", files)
    _images(tmp_path / "imagenet", [p for entries in files.values() for p, _ in entries])
    return tmp_path / "lists", tmp_path / "imagenet", files


def test_imagenet_lt_splits_point_at_the_original_images_with_human_class_names(imagenet_lt, tmp_path) -> None:
    pytest.importorskip("timm")  # the WordNet names come from timm's tables (the `vision` extra)
    lists, images, files = imagenet_lt
    built = make_list_recipe("imagenet-lt", lists, images, tmp_path / "out", progress=False)
    assert set(built.splits) == {"train", "val", "test"}
    for split, name in (
        ("train", "ImageNet_LT_train.txt"),
        ("val", "ImageNet_LT_val.txt"),
        ("test", "ImageNet_LT_test.txt"),
    ):
        dataset = built.splits[split]
        assert [s.label for s in dataset.samples] == [label for _, label in files[name]]
        for k, (path, _) in enumerate(files[name]):
            assert dataset.path(k).samefile(images / path)  # through the images link, never a copy
    assert built.splits["train"].class_counts().tolist() == [4, 3, 2]
    assert built.splits["train"].classnames == ("tench", "goldfish", "great white shark")
    assert built.notes == ("ImageNet-LT has 1000 classes; these split files hold 3",)
    assert (tmp_path / "out" / "images").is_symlink()


def test_cli_reports_each_split_and_missing_images_are_one_line_errors(imagenet_lt, tmp_path, capsys) -> None:
    lists, images, files = imagenet_lt
    out = tmp_path / "out"
    assert vlmkd_main(["data", "imagenet-lt", str(lists), str(images), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'train.txt'}: 9 images, 3 classes, 4 to 2 per class" in printed
    assert "note: ImageNet-LT has 1000 classes" in printed
    (images / files["ImageNet_LT_test.txt"][1][0]).unlink()
    assert vlmkd_main(["data", "imagenet-lt", str(lists), str(images), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "1 of the 3 test images are missing, e.g." in err and "ILSVRC2012_val_00000001.JPEG" in err
    assert not (tmp_path / "out2").exists()
    assert vlmkd_main(["data", "imagenet-lt", str(tmp_path), str(images), str(tmp_path / "out3")]) == 2
    assert "none of ImageNet_LT_train.txt found" in capsys.readouterr().err


def test_places_lt_names_classes_from_their_folders_and_accepts_leading_slashes(tmp_path) -> None:
    train = [("data_256/a/airfield/00000001.jpg", 0), ("data_256/a/airfield/00000002.jpg", 0),
             ("/data_256/a/apartment_building/outdoor/00000001.jpg", 1)]  # fmt: skip
    test = [("val_256/Places365_val_00000001.jpg", 1), ("val_256/Places365_val_00000002.jpg", 0)]
    files = {"Places_LT_train.txt": train, "Places_LT_val.txt": test[:1], "Places_LT_test.txt": test}
    _write_lists(tmp_path / "lists", files)
    _images(tmp_path / "places", [p.lstrip("/") for entries in files.values() for p, _ in entries])
    built = make_list_recipe("places-lt", tmp_path / "lists", tmp_path / "places", tmp_path / "out", progress=False)
    assert built.splits["train"].classnames == ("airfield", "apartment building outdoor")
    assert built.splits["train"].samples[2].path == "images/data_256/a/apartment_building/outdoor/00000001.jpg"
    assert [s.label for s in built.splits["test"].samples] == [1, 0]


def test_a_recipe_folder_is_reused_for_the_same_sources_and_refused_for_others(tmp_path) -> None:
    files = {
        name: [("data_256/a/airfield/00000001.jpg", 0)]
        for name in ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt")
    }
    _write_lists(tmp_path / "lists", files)
    for root in ("places", "other"):
        _images(tmp_path / root, ["data_256/a/airfield/00000001.jpg"])
    out = tmp_path / "out"
    make_list_recipe("places-lt", tmp_path / "lists", tmp_path / "places", out, progress=False)
    record = (out / "recipe.json").read_bytes()
    again = make_list_recipe("places-lt", tmp_path / "lists", tmp_path / "places", out, progress=False)
    assert again.splits["train"].classnames == ("airfield",) and (out / "recipe.json").read_bytes() == record
    with pytest.raises(InputError, match=rf"{out}: holds .*places.*, not .*other.*; delete it or choose another"):
        make_list_recipe("places-lt", tmp_path / "lists", tmp_path / "other", out, progress=False)


def _inat_json(images: list[tuple[int, str, int]], names: dict[int, str]) -> dict:
    return {
        "images": [{"id": i, "file_name": path, "width": 6, "height": 6} for i, path, _ in images],
        "annotations": [{"id": 100 + i, "image_id": i, "category_id": c} for i, _, c in images],
        "categories": [{"id": c, "name": n, "supercategory": "Plantae"} for c, n in names.items()],
    }


def test_inat2018_reads_the_official_coco_style_json_with_species_names(tmp_path) -> None:
    train = [(1, "train_val2018/Plantae/0/a.jpg", 0), (2, "train_val2018/Plantae/0/b.jpg", 0),
             (3, "train_val2018/Aves/1/c.jpg", 1)]  # fmt: skip
    val = [(7, "train_val2018/Aves/1/d.jpg", 1)]
    names = {0: "Quercus robur", 1: "Pica pica"}
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train2018.json").write_text(json.dumps(_inat_json(train, names)))
    (tmp_path / "lists" / "val2018.json").write_text(json.dumps(_inat_json(val, names)))
    _images(tmp_path / "inat", [p for _, p, _ in train + val])
    built = make_list_recipe("inat2018", tmp_path / "lists", tmp_path / "inat", tmp_path / "out", progress=False)
    assert set(built.splits) == {"train", "test"}  # the literature reports on the official val set
    assert built.splits["train"].classnames == ("Quercus robur", "Pica pica")
    assert built.splits["train"].class_counts().tolist() == [2, 1]
    assert built.splits["test"].path(0).samefile(tmp_path / "inat" / val[0][1])


def test_inat2018_list_files_of_the_decoupling_repo_work_too(tmp_path) -> None:
    train = [("train_val2018/Plantae/0/a.jpg", 0), ("train_val2018/Aves/1/c.jpg", 1)]
    files = {"iNaturalist18_train.txt": train, "iNaturalist18_val.txt": train[1:]}
    _write_lists(tmp_path / "lists", files)
    _images(tmp_path / "inat", [p for p, _ in train])
    built = make_list_recipe("inat2018", tmp_path / "lists", tmp_path / "inat", tmp_path / "out", progress=False)
    assert built.splits["train"].classnames == ("Plantae 0", "Aves 1")


def test_a_class_only_in_the_test_split_is_refused(tmp_path) -> None:
    files = {"iNaturalist18_train.txt": [("a/0/x.jpg", 0)], "iNaturalist18_val.txt": [("a/1/y.jpg", 1)]}
    _write_lists(tmp_path / "lists", files)
    _images(tmp_path / "inat", ["a/0/x.jpg", "a/1/y.jpg"])
    with pytest.raises(InputError, match=r"iNaturalist18_train\.txt: classes \[1\] appear in other splits"):
        make_list_recipe("inat2018", tmp_path / "lists", tmp_path / "inat", tmp_path / "out", progress=False)


def test_annotation_json_without_images_is_refused(tmp_path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train2018.json").write_text(json.dumps({"annotations": []}))
    (tmp_path / "lists" / "val2018.json").write_text("{}")
    (tmp_path / "inat").mkdir()
    with pytest.raises(InputError, match=r"train2018\.json: not a COCO-style annotation file"):
        make_list_recipe("inat2018", tmp_path / "lists", tmp_path / "inat", tmp_path / "out", progress=False)


RECIPE_PRESETS = {
    # preset: (arch, image size, epochs, batch, lr, weight decay), the literature's setting (docs/training.md)
    "cifar10_lt": ("resnet32", 32, 200, 128, 0.1, 2e-4),
    "cifar100_lt": ("resnet32", 32, 200, 128, 0.1, 2e-4),
    "imagenet_lt": ("resnext50", 224, 90, 512, 0.2, 5e-4),
    "inat2018": ("resnet50", 224, 90, 512, 0.2, 1e-4),
    "places_lt": ("timm:resnet152", 224, 90, 512, 0.2, 5e-4),  # our from-scratch choice (the literature fine-tunes)
}


@pytest.mark.parametrize("preset", sorted(RECIPE_PRESETS))
def test_recipe_presets_hold_the_literature_setting(preset: str) -> None:
    assert preset in list_presets()
    config = resolve_config(read_config_file(preset), {"train": "train.txt", "features": "features"})
    got = (config.arch, config.image_size, config.epochs, config.batch_size, config.lr, config.weight_decay)
    assert got == RECIPE_PRESETS[preset]
    assert config.task_loss == "balanced_softmax" and config.vlmkd_weight > 0
