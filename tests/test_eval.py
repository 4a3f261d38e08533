"""vlmkd-eval: split membership by training counts, accuracies against hand counts, outputs on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cases import make_features, tiny_config

from vlmkd.evaluate.cli import main as eval_main
from vlmkd.evaluate.metrics import format_table, per_class_accuracy, split_accuracy
from vlmkd.train.trainer import train


def test_splits_count_classes_by_training_images_with_strict_thresholds() -> None:
    counts = np.array([101, 100, 20, 19, 0, 500])
    # class:        0    1    2    3   4   5   -> many: >100 (0, 5); few: <20 (3, 4); medium: the rest (1, 2)
    labels = np.array([0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    predicted = np.array([0, 1, 1, 2, 0, 3, 4, 0, 0, 5])
    result = split_accuracy(predicted, labels, counts, many_threshold=100, few_threshold=20)
    assert {k: v["classes"] for k, v in result.items()} == {"many": 2, "medium": 2, "few": 2, "all": 6}
    assert {k: v["images"] for k, v in result.items()} == {"many": 3, "medium": 3, "few": 4, "all": 10}
    assert result["many"]["top1"] == pytest.approx(100 * 2 / 3)  # images of classes 0, 0, 5
    assert result["medium"]["top1"] == pytest.approx(100 * 2 / 3)  # classes 1, 2, 2
    assert result["few"]["top1"] == pytest.approx(100 * 2 / 4)  # classes 3, 4, 4, 4
    assert result["all"]["top1"] == pytest.approx(100 * 6 / 10)


def test_a_split_without_classes_has_no_accuracy() -> None:
    result = split_accuracy(np.array([0, 1]), np.array([0, 1]), np.array([50, 60]))
    assert result["many"] == {"top1": None, "classes": 0, "images": 0}
    assert result["few"]["top1"] is None and result["medium"]["top1"] == 100.0
    assert "-" in format_table(result)


def test_per_class_accuracy_is_nan_for_classes_without_test_images() -> None:
    accuracy = per_class_accuracy(np.array([0, 0, 2, 1]), np.array([0, 2, 2, 2]), 4)
    np.testing.assert_allclose(accuracy[[0, 2]], [100.0, 100 / 3])
    assert np.isnan(accuracy[1]) and np.isnan(accuracy[3])


def test_eval_cli_writes_results_plots_and_prints_the_table(tiny_dataset, tmp_path, capsys) -> None:
    features = make_features(tiny_dataset, tmp_path)
    config = tiny_config(tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=6)
    train(config)
    capsys.readouterr()
    args = [str(tmp_path / "run"), str(tiny_dataset.source), "--out", str(tmp_path / "eval"), "--num-workers", "0"]
    assert eval_main([*args, "--many-threshold", "5", "--few-threshold", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Many" in printed and "Few" in printed
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # counts 6/4/2 with Many > 5 and Few < 3: one class in each split
    assert [results["top1"][s]["classes"] for s in ("many", "medium", "few", "all")] == [1, 1, 1, 3]
    per_class = np.array(results["per_class"]["top1"])
    images = np.array([6, 4, 2])
    assert results["top1"]["all"]["top1"] == pytest.approx(float((per_class * images).sum() / images.sum()))
    for name in ("per_class", "tsne_images", "tsne_captions"):
        assert (tmp_path / "eval" / results["plots"][name].split("/")[-1]).stat().st_size > 1000
