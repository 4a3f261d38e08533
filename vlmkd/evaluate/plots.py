"""Figures: per-class accuracy against training counts, and t-SNE maps of image or caption features."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vlmkd.data.splits import class_splits  # noqa: E402


def plot_per_class_accuracy(
    accuracy: np.ndarray,
    train_counts: np.ndarray,
    classnames: list[str],
    path: Path,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    title: str = "Per-class top-1 against training images",
) -> Path:
    """Bars: per-class accuracy, classes sorted by training count (head left); line: the counts (log scale)."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    splits = class_splits(np.asarray(train_counts), many_threshold, few_threshold)
    colour_of = {
        int(c): colour
        for name, colour in zip(("many", "medium", "few"), ("C0", "C1", "C3"), strict=True)
        for c in splits[name]
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2), 4.0))
    x = np.arange(len(order))
    ax.bar(x, np.nan_to_num(accuracy[order]), color=[colour_of[int(c)] for c in order])
    ax.set_ylim(0, 100)
    ax.set_ylabel("test top-1 (%)")
    ax.set_xticks(x, [classnames[c] for c in order], rotation=90 if len(order) > 12 else 40, ha="right", fontsize=8)
    counts_ax = ax.twinx()
    counts_ax.plot(x, np.asarray(train_counts)[order], color="black", marker="o", markersize=3, linewidth=1)
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("training images (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("C0", "C1", "C3")]
    labels = [f"Many (>{many_threshold})", f"Medium ({few_threshold}-{many_threshold})", f"Few (<{few_threshold})"]
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    classnames: list[str],
    path: Path,
    *,
    title: str,
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """2-D t-SNE of `features` (a seeded subsample of at most `max_points`), one colour per class.

    Identical feature vectors are embedded once and drawn larger by their multiplicity: a VLM often repeats a
    caption verbatim (a tiny random one may give every image the same caption), and duplicate points crash
    Barnes-Hut t-SNE.
    """
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(features), size=min(max_points, len(features)), replace=False))
    distinct, where = np.unique(np.asarray(features, dtype=np.float32)[keep], axis=0, return_inverse=True)
    if len(distinct) >= 5:
        perplexity = float(min(30.0, (len(distinct) - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(distinct)
    else:  # too few distinct points for t-SNE: their first two principal coordinates
        centred = distinct - distinct.mean(axis=0)
        embedded = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
        embedded = np.pad(embedded, ((0, 0), (0, 2 - embedded.shape[1])))
    pairs, multiplicity = np.unique(np.stack([where.reshape(-1), labels[keep]], 1), axis=0, return_counts=True)
    position, point_labels = embedded[pairs[:, 0]], pairs[:, 1]
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    cmap = plt.get_cmap("tab10" if len(classnames) <= 10 else "tab20")
    for c in np.unique(point_labels):
        chosen = point_labels == c
        sizes = 6 * np.sqrt(multiplicity[chosen])
        ax.scatter(*position[chosen].T, s=sizes, color=cmap(int(c) % cmap.N), label=classnames[int(c)], alpha=0.8)
    if len(classnames) <= 20:
        legend = ax.legend(fontsize=7, loc="best")
        for handle in legend.legend_handles:
            handle.set_sizes([24.0])  # one size in the legend, whatever the multiplicity of the first point
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
