"""CIFAR-10/100-LT from the python-pickle archives: the LDAM-DRW cut, pixels, archive forms, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cifar_files import pack, py2_pickle, write_cifar10, write_cifar100
from PIL import Image

from vlmkd.cli import main as vlmkd_main
from vlmkd.data import load_image_list
from vlmkd.data.cifar import find_cifar, ldam_counts, ldam_indices, read_cifar_pickle
from vlmkd.data.recipes import make_cifar_lt
from vlmkd.errors import InputError


def _ldam_reference_counts(img_max: int, cls_num: int, imb_factor: float) -> list[int]:
    """LDAM-DRW's `get_img_num_per_cls` (imb_type 'exp') as their code writes it, imb_factor = 1 / IF."""
    return [int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))) for cls_idx in range(cls_num)]


@pytest.mark.parametrize(
    ("max_count", "classes", "factor", "total"),
    # Published training-set sizes of CIFAR-10-LT and CIFAR-100-LT (e.g. Cao et al. 2019; Cui et al. 2019).
    [
        (5000, 10, 100, 12406),
        (5000, 10, 50, 13996),
        (5000, 10, 10, 20431),
        (500, 100, 100, 10847),
        (500, 100, 50, 12608),
        (500, 100, 10, 19573),
    ],  # fmt: skip
)
def test_ldam_counts_give_the_published_cifar_lt_sizes(max_count, classes, factor, total) -> None:
    counts = ldam_counts(max_count, classes, factor)
    assert counts == _ldam_reference_counts(max_count, classes, 1 / factor)
    assert sum(counts) == total
    assert counts[0] == max_count and counts[-1] == max_count // factor


def test_cifar10_lt_if100_class_sizes_are_the_familiar_ones() -> None:
    assert ldam_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_ldam_indices_pick_the_images_ldam_drw_picks() -> None:
    labels = np.random.default_rng(5).integers(0, 10, 700)
    counts = [60, 40, 30, 20, 15, 10, 8, 6, 5, 3]
    np.random.seed(0)  # LDAM-DRW: np.random.seed(rand_number), then per class np.random.shuffle(idx)[:n]
    expected = []
    for the_class, the_img_num in zip(np.unique(labels), counts, strict=True):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        expected.append(idx[:the_img_num])
    assert np.array_equal(ldam_indices(labels, counts, seed=0), np.concatenate(expected))
    assert not np.array_equal(ldam_indices(labels, counts, seed=1), np.concatenate(expected))


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("cifar10")
    return folder, write_cifar10(folder, per_class_train=20, per_class_test=3)


@pytest.mark.parametrize("form", ["parent folder", "extracted folder", "archive", "folder with archive"])
def test_cifar10_lt_pixels_labels_and_counts_match_the_source(cifar10_folder, tmp_path, form: str) -> None:
    folder, written = cifar10_folder
    if form == "extracted folder":
        source = folder / "cifar-10-batches-py"
    elif form == "parent folder":
        source = folder
    else:
        (tmp_path / "dl").mkdir()
        source = pack(folder, "cifar-10-batches-py", tmp_path / "dl" / "cifar-10-python.tar.gz")
        source = source if form == "archive" else source.parent
    built = make_cifar_lt(source, tmp_path / "lt", imbalance_factor=10, progress=False)
    train, test = built.splits["train"], built.splits["test"]
    assert train.class_counts().tolist() == _ldam_reference_counts(20, 10, 0.1)
    assert test.class_counts().tolist() == [3] * 10
    assert train.classnames[:2] == ("airplane", "automobile")
    rows = np.concatenate([written[f"data_batch_{b}"][0] for b in range(1, 6)])
    labels = sum((written[f"data_batch_{b}"][1] for b in range(1, 6)), [])
    for k in (0, len(train) // 2, len(train) - 1):
        sample = train.samples[k]
        index = int(Path(sample.path).stem)  # file names are the image's index in the training batches
        assert sample.label == labels[index]
        pixels = np.asarray(Image.open(train.path(k)))
        row = rows[index]
        # CIFAR rows: 1024 red values, then green, then blue, each row-major over 32 x 32.
        assert pixels[5, 7].tolist() == [row[5 * 32 + 7], row[1024 + 5 * 32 + 7], row[2048 + 5 * 32 + 7]]
        assert np.array_equal(pixels[..., 2].reshape(-1), row[2048:])
    first_test = np.asarray(Image.open(test.path(0)))
    assert np.array_equal(first_test[..., 0].reshape(-1), written["test_batch"][0][0][:1024])
    assert json.loads((tmp_path / "lt" / "recipe.json").read_text())["train_counts"] == train.class_counts().tolist()


def test_cifar100_lt_reads_fine_labels_and_names(tmp_path) -> None:
    written = write_cifar100(tmp_path / "src", per_class_train=6, per_class_test=1)
    built = make_cifar_lt(tmp_path / "src", tmp_path / "lt", imbalance_factor=5, progress=False)
    train = built.splits["train"]
    assert train.class_counts().tolist() == _ldam_reference_counts(6, 100, 0.2)
    assert train.classnames[-1] == "aquarium fish"  # underscores become spaces for prompts
    assert "train/aquarium_fish/" in train.samples[-1].path
    assert len(built.splits["test"]) == 100
    index = int(Path(train.samples[0].path).stem)
    assert np.array_equal(
        np.asarray(Image.open(train.path(0)))[..., 1].reshape(-1), written["train"][0][index][1024:2048]
    )


def test_rebuilding_the_same_recipe_reuses_the_folder_and_another_is_refused(cifar10_folder, tmp_path) -> None:
    folder, _ = cifar10_folder
    make_cifar_lt(folder, tmp_path / "lt", imbalance_factor=10, progress=False)
    listing = (tmp_path / "lt" / "train.txt").stat().st_mtime_ns
    make_cifar_lt(folder, tmp_path / "lt", imbalance_factor=10, progress=False)
    assert (tmp_path / "lt" / "train.txt").stat().st_mtime_ns == listing
    with pytest.raises(InputError, match="lt: holds"):
        make_cifar_lt(folder, tmp_path / "lt", imbalance_factor=5, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(InputError, match="not a vlmkd recipe folder"):
        make_cifar_lt(folder, tmp_path / "other", imbalance_factor=10, progress=False)


def test_cli_writes_a_dataset_every_stage_can_read(cifar10_folder, tmp_path, capsys) -> None:
    folder, _ = cifar10_folder
    out = tmp_path / "c10lt"
    assert (
        vlmkd_main(["data", "cifar-lt", str(folder), str(out), "--imbalance-factor", "10", "--dataset", "cifar10"]) == 0
    )
    printed = capsys.readouterr().out
    total = sum(_ldam_reference_counts(20, 10, 0.1))
    assert f"{out / 'train.txt'}: {total} images, 10 classes, 20 to 2 per class" in printed
    assert len(load_image_list(out / "test.txt")) == 30


def test_missing_or_ambiguous_cifar_data_is_a_one_line_error(cifar10_folder, tmp_path, capsys) -> None:
    assert vlmkd_main(["data", "cifar-lt", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "nothing: not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CIFAR data found"):
        find_cifar(tmp_path / "empty")
    both = tmp_path / "both"
    write_cifar10(both, 2, 1)
    write_cifar100(both, 2, 1)
    with pytest.raises(InputError, match="holds both CIFAR-10 and CIFAR-100; choose one with --dataset"):
        find_cifar(both)
    assert find_cifar(both, "cifar100").layout.name == "cifar100"
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(InputError, match=r"bad\.tar\.gz: not a readable tar archive"):
        find_cifar(tmp_path / "bad.tar.gz")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, "'data' must be a uint8 array"),
        (
            {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]},
            r"'data' must be a uint8 array of shape \(N, 3072\), got \(2, 100\)",
        ),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0]}, "'labels' must be a list of 2 integer labels"),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]}, r"labels must lie in \[0, 10\)"),
    ],
)
def test_malformed_batches_are_refused_naming_the_file(tmp_path, content, message) -> None:
    folder = tmp_path / "c"
    write_cifar10(folder, 2, 1)
    (folder / "cifar-10-batches-py" / "data_batch_3").write_bytes(py2_pickle(content))
    with pytest.raises(InputError, match=rf"data_batch_3: {message}"):
        find_cifar(folder).split(train=True)


def test_a_truncated_pickle_is_an_input_error() -> None:
    data = py2_pickle({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(InputError, match="batch: not a CIFAR python-pickle file"):
        read_cifar_pickle(data[: len(data) // 2], "batch")


@pytest.mark.slow
def test_the_cifar10_lt_preset_trains_and_evaluates_on_the_built_folder(cifar10_folder, tmp_path, capsys) -> None:
    folder, _ = cifar10_folder
    data = tmp_path / "c10lt"
    assert vlmkd_main(["data", "cifar-lt", str(folder), str(data), "--imbalance-factor", "10"]) == 0
    run = tmp_path / "run"
    argv = ["train", "--config", "cifar10_lt", "--train", str(data / "train.txt"), "--vlmkd-weight", "0",
            "--output", str(run), "--epochs", "1", "--warmup-epochs", "0", "--width", "0.25", "--batch-size", "16",
            "--num-workers", "0", "--threads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    config = (run / "config.yaml").read_text()
    assert "arch: resnet32" in config and "task_loss: balanced_softmax" in config and "weight_decay: 0.0002" in config
    assert vlmkd_main(["eval", str(run), str(data / "test.txt"), "--no-plots", "--num-workers", "0"]) == 0
    results = json.loads((run / "eval" / "metrics.json").read_text())
    assert results["top1"]["all"]["images"] == 30
