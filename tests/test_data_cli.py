"""`vlmkd data` commands, run through the real dispatcher."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vlmkd.cli import run_command
from vlmkd.data import load_image_list, longtail_counts


def test_make_demo_then_info_longtail_and_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert run_command("data", ["make-demo", str(out), "--test-per-class", "5", "--max-train-per-class", "20"]) == 0
    train = load_image_list(out / "train.txt")
    assert train.class_counts().tolist() == longtail_counts(20, 10, 100.0)
    assert run_command("data", ["info", str(out / "train.txt"), "--many-threshold", "10", "--few-threshold", "3"]) == 0
    assert "many" in capsys.readouterr().out
    cut = tmp_path / "cut"
    assert run_command("data", ["longtail", str(out / "test.txt"), str(cut), "--imbalance-factor", "5", "--copy"]) == 0
    assert load_image_list(cut / "train.txt").class_counts().tolist() == longtail_counts(5, 10, 5.0)
    for loader in ("torch", "dali") if importlib.util.find_spec("nvidia.dali") else ("torch",):
        assert (
            run_command(
                "data",
                [
                    "load",
                    str(out / "test.txt"),
                    "--loader",
                    loader,
                    "--image-size",
                    "16",
                    "--batch-size",
                    "16",
                    "--workers",
                    "1",
                ],
            )
            == 0
        )
        assert "50 images in 4 batches" in capsys.readouterr().out


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.txt").write_text("a.png 0\n../b.png 1\n")
    assert run_command("data", ["info", str(tmp_path / "bad.txt")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bad.txt:2: path '../b.png' escapes the dataset root" in error


def test_info_lists_each_splits_classes_by_name(tiny_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(tiny_dataset.source)
    assert run_command("data", ["info", spec, "--many-threshold", "5", "--few-threshold", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  many       1 classes,        6 images: zero (6)" in lines
    assert "  medium     1 classes,        4 images: one (4)" in lines
    assert "  few        1 classes,        2 images: two (2)" in lines
