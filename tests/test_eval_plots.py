"""vlmkd-eval's figures: what a reader needs is on them (labels, legend entries, 0% classes), nothing hidden.

Checked on the returned matplotlib figures (positions in display coordinates after a draw), and through the
real `vlmkd-eval` command line for the caption t-SNE of a store with a handful of distinct captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _cases import make_features, tiny_config

from vlmkd.evaluate.cli import main as eval_main
from vlmkd.reporting.eval_plots import MIN_DISTINCT_CAPTIONS, plot_per_class_accuracy, plot_tsne
from vlmkd.train.trainer import train

ACCURACY = np.array([90.0, 0.0, 40.0, 0.0, np.nan])
COUNTS = np.array([400, 120, 50, 8, 3])
NAMES = ["zero", "one", "two", "three", "four"]


def per_class(tmp_path: Path):
    return plot_per_class_accuracy(ACCURACY, COUNTS, NAMES, tmp_path / "per_class.png")


def test_per_class_plot_labels_both_axes_and_lists_the_counts_line(tmp_path: Path) -> None:
    plot = per_class(tmp_path)
    bars_ax, counts_ax = plot.figure.axes
    assert bars_ax.get_xlabel() and bars_ax.get_ylabel() and counts_ax.get_ylabel()
    legend = [text.get_text() for text in bars_ax.get_legend().get_texts()]
    assert legend[:3] == ["Many (>100)", "Medium (20-100)", "Few (<20)"]
    assert "training images" in legend and "0% top-1" in legend
    assert plot.path.stat().st_size > 1000


MATHTEXT_NAMES = ["price $5 to $6", "x_1^2 $\\frac{a}{$", "plain", "$", "100% $ off $"]


def test_class_names_with_dollar_signs_are_drawn_as_written_not_as_mathtext(tmp_path: Path) -> None:
    """`price $5 to $6` once crashed the plots (and the evaluation) in matplotlib's mathtext parser."""
    plot = plot_per_class_accuracy(ACCURACY, COUNTS, MATHTEXT_NAMES, tmp_path / "per_class.png")
    plot.figure.canvas.draw()
    shown = [label.get_text() for label in plot.figure.axes[0].get_xticklabels()]
    assert shown == [MATHTEXT_NAMES[c] for c in np.argsort(-COUNTS, kind="stable")]
    features = np.random.default_rng(0).normal(size=(60, 8))
    labels = np.arange(60) % len(MATHTEXT_NAMES)
    tsne = plot_tsne(features, labels, MATHTEXT_NAMES, tmp_path / "tsne.png", title="t-SNE", min_distinct=10)
    tsne.figure.canvas.draw()
    assert [text.get_text() for text in tsne.figure.axes[0].get_legend().get_texts()] == MATHTEXT_NAMES
    assert plot.path.stat().st_size > 1000 and tsne.path.stat().st_size > 1000


def test_per_class_legend_is_outside_the_bars(tmp_path: Path) -> None:
    plot = per_class(tmp_path)
    renderer = plot.figure.canvas.get_renderer()
    plot.figure.draw(renderer)
    bars_ax = plot.figure.axes[0]
    legend_box = bars_ax.get_legend().get_window_extent(renderer)
    axes_box = bars_ax.get_window_extent(renderer)
    assert legend_box.y0 >= axes_box.y1 - 1  # above the plotting area, so no bar can be under it


def test_a_zero_accuracy_class_has_a_visible_marker_and_a_class_without_tests_says_na(tmp_path: Path) -> None:
    plot = per_class(tmp_path)
    bars_ax = plot.figure.axes[0]
    order = np.argsort(-COUNTS, kind="stable")
    zero_positions = sorted(np.flatnonzero(ACCURACY[order] == 0).tolist())
    markers = [collection for collection in bars_ax.collections if len(collection.get_offsets())]
    assert [sorted(m.get_offsets()[:, 0].tolist()) for m in markers] == [zero_positions]
    assert all(size > 0 for size in markers[0].get_sizes())
    assert [t.get_text() for t in bars_ax.texts] == ["n/a"]


def test_tsne_of_a_handful_of_distinct_vectors_says_so_instead_of_drawing_stacks(tmp_path: Path) -> None:
    features = np.repeat(np.eye(6, 8, dtype=np.float32), 50, axis=0)  # 6 distinct vectors, 300 points
    labels = np.arange(300) % 3
    plot = plot_tsne(features, labels, ["a", "b", "c"], tmp_path / "t.png", title="t", what="captions",
                     min_distinct=MIN_DISTINCT_CAPTIONS)  # fmt: skip
    assert plot.note == f"too few distinct captions to embed (6 distinct of 300; a map needs {MIN_DISTINCT_CAPTIONS})"
    assert not plot.figure.axes[0].collections  # no scatter at all
    assert plot.path.stat().st_size > 1000
    many = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    mapped = plot_tsne(many, np.arange(60) % 3, ["a", "b", "c"], tmp_path / "m.png", title="m", max_points=60)
    assert mapped.note is None and len(mapped.figure.axes[0].collections) == 3


def test_eval_cli_says_when_the_captions_are_too_few_to_map(tiny_dataset, tmp_path: Path, capsys) -> None:
    features = make_features(tiny_dataset, tmp_path)  # class-template captions: at most 12 distinct
    train(tiny_config(tiny_dataset, tmp_path / "run", features=str(features), batch_size=6))
    capsys.readouterr()
    args = [str(tmp_path / "run"), str(tiny_dataset.source), "--out", str(tmp_path / "eval"), "--num-workers", "0"]
    assert eval_main([*args, "--many-threshold", "5", "--few-threshold", "3", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if x.startswith("plot (tsne_captions): "))
    assert line.endswith(f"a map needs {MIN_DISTINCT_CAPTIONS})") and "too few distinct captions to embed" in line
    stages = captured.err.splitlines()
    assert [s.split(" ...")[0] for s in stages if " ..." in s] == [
        "per-class accuracy plot",
        "t-SNE of 12 image features",
        "t-SNE of caption features",
    ]
    assert all(s.endswith(" s") for s in stages if " ..." in s)
