"""Figures: per-class accuracy against training counts, and t-SNE maps of image or caption features.

Figures are `matplotlib.figure.Figure` objects on their own Agg canvas, never pyplot's: importing or calling
this module leaves matplotlib's global backend (a notebook's inline one) and pyplot's figure list alone, and
a returned figure still shows inline in a notebook.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from vlmkd.data.splits import class_splits

MIN_DISTINCT_POINTS = 5  # t-SNE's perplexity needs a few points at least
MIN_DISTINCT_CAPTIONS = 20  # fewer distinct captions than this only make stacks, no map worth reading


@dataclass(frozen=True)
class Plot:
    """A figure and the PNG it was saved to; `note` says why it holds a message instead of a map (else None)."""

    path: Path
    figure: Figure
    note: str | None = None


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def plot_per_class_accuracy(
    accuracy: np.ndarray,
    train_counts: np.ndarray,
    classnames: list[str],
    path: Path,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    title: str = "Per-class top-1 against training images",
) -> Plot:
    """Bars: per-class accuracy, classes sorted by training count (head left); line: the counts (log scale)."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    splits = class_splits(np.asarray(train_counts), many_threshold, few_threshold)
    colour_of = {
        int(c): colour
        for name, colour in zip(("many", "medium", "few"), ("C0", "C1", "C3"), strict=True)
        for c in splits[name]
    }
    fig, ax = _figure((max(6.0, 0.35 * len(order) + 2), 4.6))
    x = np.arange(len(order))
    sorted_accuracy = np.asarray(accuracy, dtype=float)[order]
    colours = [colour_of[int(c)] for c in order]
    ax.bar(x, np.nan_to_num(sorted_accuracy), color=colours)
    zero = sorted_accuracy == 0  # no bar to see: a marker on the axis says "measured, and 0%"
    ax.scatter(x[zero], np.full(zero.sum(), 2.0), marker="v", s=40, color=np.array(colours)[zero], edgecolors="black",
               zorder=3, clip_on=False)  # fmt: skip
    for position in x[np.isnan(sorted_accuracy)]:
        ax.text(position, 1, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test top-1 (%)")
    ax.set_xlabel("class (sorted by training images, most on the left)")
    ax.set_xticks(x, [classnames[c] for c in order], rotation=90 if len(order) > 12 else 40, ha="right", fontsize=8)
    _as_written(ax.get_xticklabels())
    counts_ax = ax.twinx()
    (counts_line,) = counts_ax.plot(
        x, np.asarray(train_counts)[order], color="black", marker="o", markersize=3, linewidth=1
    )
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("training images (log)")
    handles: list = [Rectangle((0, 0), 1, 1, color=c) for c in ("C0", "C1", "C3")]
    labels = [f"Many (>{many_threshold})", f"Medium ({few_threshold}-{many_threshold})", f"Few (<{few_threshold})"]
    handles.append(counts_line)
    labels.append("training images")
    if zero.any():
        handles.append(Line2D([], [], marker="v", color="grey", markeredgecolor="black", linestyle=""))
        labels.append("0% top-1")
    # above the axes, not over the bars
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize=7,
              frameon=False)  # fmt: skip
    ax.set_title(title, pad=22)
    fig.tight_layout()
    _save(fig, path)
    return Plot(path, fig)


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    classnames: list[str],
    path: Path,
    *,
    title: str,
    max_points: int = 2000,
    seed: int = 0,
    what: str = "features",
    min_distinct: int = MIN_DISTINCT_POINTS,
) -> Plot:
    """2-D t-SNE of `features` (a seeded subsample of at most `max_points`), one colour per class.

    Identical feature vectors are embedded once and drawn larger by their multiplicity: a VLM often repeats a
    caption verbatim, and duplicate points crash Barnes-Hut t-SNE. With fewer than `min_distinct` distinct
    vectors (a tiny random VLM may give every image one of a handful of captions) a map would only show
    stacks, so the figure says "too few distinct {what} to embed" instead.
    """
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(features), size=min(max_points, len(features)), replace=False))
    distinct, where = np.unique(np.asarray(features, dtype=np.float32)[keep], axis=0, return_inverse=True)
    if len(distinct) < min_distinct:
        note = f"too few distinct {what} to embed ({len(distinct)} distinct of {len(keep)}; a map needs {min_distinct})"
        return Plot(path, _message_figure(path, title, note), note)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(distinct) - 1) / 3))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(distinct)
    pairs, multiplicity = np.unique(np.stack([where.reshape(-1), labels[keep]], 1), axis=0, return_counts=True)
    position, point_labels = embedded[pairs[:, 0]], pairs[:, 1]
    fig, ax = _figure((6.0, 5.5))
    cmap = matplotlib.colormaps["tab10" if len(classnames) <= 10 else "tab20"]
    for c in np.unique(point_labels):
        chosen = point_labels == c
        sizes = 6 * np.sqrt(multiplicity[chosen])
        ax.scatter(*position[chosen].T, s=sizes, color=cmap(int(c) % cmap.N), label=classnames[int(c)], alpha=0.8)
    if len(classnames) <= 20:
        legend = ax.legend(fontsize=7, loc="best")
        for handle in legend.legend_handles:
            handle.set_sizes([24.0])  # one size in the legend, whatever the multiplicity of the first point
        _as_written(legend.get_texts())
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return Plot(path, fig)


def _as_written(texts: Iterable[Text]) -> None:
    """Show class names as written: `price $5 to $6` is a name, not matplotlib mathtext (which once failed the
    whole evaluation with a 79-line parse error)."""
    for text in texts:
        text.set_parse_math(False)


def _message_figure(path: Path, title: str, message: str) -> Figure:
    fig, ax = _figure((6.0, 2.5))
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, message.replace(" (", "\n(", 1), ha="center", va="center", fontsize=10, wrap=True)
    _save(fig, path)
    return fig
