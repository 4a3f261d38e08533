"""Long-tail cuts follow the exponential profile exactly; Many/Medium/Few splits follow the thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmkd.data import ImageList, load_image_list
from vlmkd.data.longtail import longtail_counts, longtail_indices, make_longtail
from vlmkd.data.splits import class_splits
from vlmkd.errors import InputError


def reference_counts(max_count: int, num_classes: int, imbalance_factor: int) -> list[int]:
    """floor(max * IF^(-k/(C-1))) in exact integers: the largest n with n^(C-1) * IF^k <= max^(C-1), at least 1."""
    counts = []
    for k in range(num_classes):
        low, high = 1, max_count  # binary search; n = 1 is kept even when the profile falls below it
        while low < high:
            middle = (low + high + 1) // 2
            if middle ** (num_classes - 1) * imbalance_factor**k <= max_count ** (num_classes - 1):
                low = middle
            else:
                high = middle - 1
        counts.append(low)
    return counts


def test_cifar_lt_profile_numbers() -> None:
    # The classic CIFAR-10-LT cut (500 per class at the head, IF 100) ends at 5 images.
    assert longtail_counts(500, 10, 100) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert longtail_counts(400, 10, 100) == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2000), st.integers(2, 40), st.integers(1, 500))
def test_counts_equal_the_exact_floor_of_the_profile(max_count: int, num_classes: int, imbalance: int) -> None:
    assert longtail_counts(max_count, num_classes, imbalance) == reference_counts(max_count, num_classes, imbalance)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 40), st.floats(1.0, 1000.0))
def test_counts_are_non_increasing_start_at_max_and_never_reach_zero(
    max_count: int, num_classes: int, imbalance: float
) -> None:
    counts = longtail_counts(max_count, num_classes, imbalance)
    assert len(counts) == num_classes and counts[0] == max_count
    assert all(a >= b >= 1 for a, b in zip(counts, counts[1:], strict=False))
    if num_classes > 1:
        assert counts[-1] == max(1, math.floor(max_count / imbalance * (1 + 1e-9)))


@pytest.mark.parametrize(
    ("args", "message"), [((0, 3, 10), "max_count"), ((5, 0, 10), "num_classes"), ((5, 3, 0.5), "imbalance_factor")]
)
def test_invalid_profile_arguments_are_rejected(args: tuple, message: str) -> None:
    with pytest.raises(InputError, match=message):
        longtail_counts(*args)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(3, 30), min_size=2, max_size=8), st.integers(0, 2**31), st.integers(1, 50))
def test_indices_draw_the_profile_from_each_class_without_repeats(sizes: list[int], seed: int, imbalance: int) -> None:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(seed).shuffle(labels)
    exclude = np.flatnonzero(labels == 0)[:1]
    counts = longtail_counts(min(sizes) - 1, len(sizes), imbalance)
    chosen = longtail_indices(labels, counts, seed=seed, exclude=exclude)
    assert np.all(np.diff(chosen) > 0)  # sorted, unique
    assert np.bincount(labels[chosen], minlength=len(sizes)).tolist() == counts
    assert not np.isin(exclude, chosen).any()
    assert np.array_equal(chosen, longtail_indices(labels, counts, seed=seed, exclude=exclude))


def test_class_too_small_for_the_profile_is_reported() -> None:
    with pytest.raises(InputError, match="class 1 has 2 images, the long-tail profile needs 3"):
        longtail_indices(np.array([0, 0, 0, 1, 1]), [3, 3])


def balanced(root: Path, per_class: int, classes: int) -> ImageList:
    lines = []
    for label in range(classes):
        for k in range(per_class):
            relative = f"src/{label}/{k}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 10 * label + k, dtype=np.uint8)).save(root / relative)
            lines.append(f"{relative} {label}")
    (root / "all.txt").write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("".join(f"c{k}\n" for k in range(classes)))
    return load_image_list(root / "all.txt")


@pytest.mark.parametrize("files", ["link", "copy"])
def test_make_longtail_writes_a_self_contained_cut_that_loads_back(tmp_path: Path, files: str) -> None:
    source = balanced(tmp_path / "in", per_class=8, classes=4)
    cut = make_longtail(source, tmp_path / "out", imbalance_factor=8, seed=3, files=files)
    assert cut.class_counts().tolist() == longtail_counts(8, 4, 8) == [8, 4, 2, 1]
    assert cut.root == tmp_path / "out" and cut.classnames == source.classnames
    reloaded = load_image_list(tmp_path / "out" / "train.txt")
    assert reloaded.fingerprint() == cut.fingerprint()
    by_path = {s.path: s.label for s in source.samples}
    for index, sample in enumerate(cut.samples):
        assert by_path[sample.path] == sample.label
        assert cut.path(index).read_bytes() == source.path(source.samples.index(sample)).read_bytes()
    # Same seed, same cut; the cut is rewritten in place without error.
    again = make_longtail(source, tmp_path / "out", imbalance_factor=8, seed=3, files=files)
    assert again.samples == cut.samples


def test_make_longtail_refuses_to_overwrite_its_source_list(tmp_path: Path) -> None:
    source = balanced(tmp_path, per_class=3, classes=2)
    with pytest.raises(InputError, match="would overwrite the source list file"):
        make_longtail(source, tmp_path, imbalance_factor=2, list_name="all.txt")


def test_make_longtail_seed_changes_which_images_not_how_many(tmp_path: Path) -> None:
    source = balanced(tmp_path / "in", per_class=10, classes=3)
    a = make_longtail(source, tmp_path / "a", imbalance_factor=5, seed=0)
    b = make_longtail(source, tmp_path / "b", imbalance_factor=5, seed=1)
    assert a.class_counts().tolist() == b.class_counts().tolist() == [10, 4, 2]
    assert a.samples != b.samples


def test_class_splits_use_strict_thresholds() -> None:
    counts = np.array([101, 100, 20, 19, 0, 500])
    splits = class_splits(counts)
    assert splits["many"].tolist() == [0, 5]
    assert splits["medium"].tolist() == [1, 2]
    assert splits["few"].tolist() == [3, 4]
    small = class_splits(np.array([400, 239, 143, 86, 51, 30, 18, 11, 6, 4]), many_threshold=100, few_threshold=20)
    assert [small[k].tolist() for k in ("many", "medium", "few")] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=50), st.integers(0, 200), st.integers(0, 200))
def test_class_splits_partition_the_classes(counts: list[int], many: int, few: int) -> None:
    if few > many + 1:
        with pytest.raises(InputError):
            class_splits(np.array(counts, dtype=np.int64), many, few)
        return
    splits = class_splits(np.array(counts, dtype=np.int64), many, few)
    joined = np.sort(np.concatenate(list(splits.values())))
    assert joined.tolist() == list(range(len(counts)))
    assert all(counts[k] > many for k in splits["many"]) and all(counts[k] < few for k in splits["few"])


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.floats(1.0, 10.0), st.integers(0, 10**6))
def test_make_longtail_on_disk_matches_the_profile(tmp_path_factory, sizes: list[int], imbalance: float, seed: int):
    root = tmp_path_factory.mktemp("property")
    lines = []
    for label, size in enumerate(sizes):
        for k in range(size):
            (root / "in" / f"{label}_{k}.png").parent.mkdir(parents=True, exist_ok=True)
            (root / "in" / f"{label}_{k}.png").write_bytes(f"{label}/{k}".encode())  # content identifies the file
            lines.append(f"{label}_{k}.png {label}")
    (root / "in" / "list.txt").write_text("\n".join(lines) + "\n")
    source = load_image_list(root / "in" / "list.txt")
    cut = make_longtail(source, root / "out", imbalance, seed=seed, files="copy")
    assert cut.class_counts().tolist() == longtail_counts(min(sizes), len(sizes), imbalance)
    for index, sample in enumerate(cut.samples):
        assert cut.path(index).read_bytes() == f"{sample.label}/{sample.path.split('_')[1][:-4]}".encode()
