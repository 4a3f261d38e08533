"""The A/B report: top-1 per split, paired differences with their tests, the text term against chance, per-class
changes, the confusions that moved, and a plot of per-class differences against training counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from vlmkd.atomic_files import write_text_atomic
from vlmkd.experiment.statistics import (
    SPLITS,
    TEST_NAME,
    PairedDifference,
    class_differences,
    confusion_shifts,
    split_difference,
    split_summary,
)

REPORT_FILE = "REPORT.md"
PLOT_FILE = "per_class.png"
ALPHA = 0.05


def cell(difference: PairedDifference, digits: int = 1) -> str:
    """`+1.2 (p 0.034 / 0.041)`: paired mean difference with the t-test and sign-flip p; `0 (identical)`."""
    if difference.n == 0:
        return "-"
    if difference.identical:
        return "0 (identical on every seed)"
    if difference.n < 2:
        return f"{difference.mean:+.{digits}f} (1 seed)"
    return f"{difference.mean:+.{digits}f} (p {difference.p_t:.3f} / {difference.p_sign_flip:.3f})"


def significant(difference: PairedDifference) -> bool:
    """Both tests, the paired t-test and the sign-flip test, give p < ALPHA (never with fewer than 2 seeds)."""
    return difference.n > 1 and difference.p_t < ALPHA and difference.p_sign_flip < ALPHA


def verdict(arm: str, reference: str, split: str, difference: PairedDifference) -> str:
    """One sentence: did `arm` move `split` against `reference`, beyond seed noise?"""
    if difference.n < 2:
        return f"- {arm}, {split}: too few paired seeds ({difference.n}) to test"
    if difference.identical:
        return f"- {arm}, {split}: identical to {reference} on every one of {difference.n} seeds"
    word = ("a gain" if difference.mean > 0 else "a cost") if significant(difference) else "no change beyond seed noise"
    return (
        f"- {arm}, {split}: {difference.mean:+.1f} points over {difference.n} seeds, {word} "
        f"(t = {difference.t:.2f}, p = {difference.p_t:.3f}; sign-flip p = {difference.p_sign_flip:.3f})"
    )


def top1_lines(results: Sequence[dict], arms: Sequence[str]) -> list[str]:
    lines = ["| arm | seeds | " + " | ".join(s.capitalize() for s in SPLITS) + " |", "|---|---|" + "---|" * len(SPLITS)]
    for arm in arms:
        summaries = [split_summary(results, arm, split) for split in SPLITS]
        cells = [f"{mean:.1f} +- {std:.1f}" if n > 1 else f"{mean:.1f}" for mean, std, n in summaries]
        lines.append(f"| {arm} | {summaries[0][2]} | " + " | ".join(cells) + " |")
    return lines


def difference_lines(results: Sequence[dict], arms: Sequence[str], reference: str) -> list[str]:
    lines = ["| arm | " + " | ".join(f"{s.capitalize()} - {reference}" for s in SPLITS) + " |",
             "|---|" + "---|" * len(SPLITS)]  # fmt: skip
    for arm in arms:
        if arm != reference:
            cells = [cell(split_difference(results, arm, reference, split)) for split in SPLITS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def text_term_lines(results: Sequence[dict], arms: Sequence[str]) -> list[str]:
    """Final VLM-KD loss and its fraction of the chance level per arm (arms with the term on)."""
    lines = []
    for arm in arms:
        terms = [r["text_term"] for r in results if r["arm"] == arm and r.get("text_term")]
        if terms:
            loss = np.array([t["vlmkd_loss"] for t in terms])
            fraction = np.array([t["vlmkd_fraction"] for t in terms])
            spread = f" +- {fraction.std(ddof=1):.3f}" if len(terms) > 1 else ""
            lines.append(f"| {arm} | {loss.mean():.3f} | {fraction.mean():.3f}{spread} | {len(terms)} |")
    if not lines:
        return []
    return ["| arm | final VLM-KD loss | fraction of its chance level | seeds |", "|---|---|---|---|", *lines]


def class_lines(results: Sequence[dict], arms: Sequence[str], reference: str) -> list[str]:
    """Per class: training count, the reference's top-1 and each arm's paired change (* where p < 0.05)."""
    base = [r for r in results if r["arm"] == reference]
    if not base:
        return []
    names, counts = base[0]["classnames"], base[0]["train_counts"]
    reference_accuracy = np.array([r["per_class"] for r in base], dtype=np.float64).mean(axis=0)
    others = [arm for arm in arms if arm != reference]
    columns = {arm: class_differences(results, arm, reference) for arm in others}
    lines = ["| class | train images | " + reference + " | " + " | ".join(others) + " |",
             "|---|---|---|" + "---|" * len(others)]  # fmt: skip
    for k in np.argsort(-np.asarray(counts), kind="stable"):
        changes = []
        for arm in others:
            d = columns[arm][k] if k < len(columns[arm]) else None
            mark = "*" if d is not None and d.n > 1 and d.p_t < ALPHA else ""
            changes.append("-" if d is None or d.n == 0 else f"{d.mean:+.1f}{mark}")
        lines.append(f"| {names[k]} | {counts[k]} | {reference_accuracy[k]:.1f} | " + " | ".join(changes) + " |")
    return lines


def confusion_lines(results: Sequence[dict], arm: str, reference: str, top: int = 5) -> list[str]:
    names = next(r["classnames"] for r in results if r["arm"] == reference)
    shifts = confusion_shifts(results, arm, reference, top)
    if not shifts:
        return [f"No confusion moved between {reference} and {arm}."]
    lines = [f"| true -> predicted | {reference} | {arm} | change (p) |", "|---|---|---|---|"]
    for shift in shifts:
        lines.append(
            f"| {names[shift.true]} -> {names[shift.predicted]} | {shift.reference_rate:.1f} | "
            f"{shift.arm_rate:.1f} | {cell(shift.difference)} |"
        )
    return lines


def plot_class_differences(results: Sequence[dict], arms: Sequence[str], reference: str, path: Path) -> Path:
    """Per-class top-1 change against `reference` (paired mean, 95% t interval) over the class's training count."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    base = next(r for r in results if r["arm"] == reference)
    counts = np.asarray(base["train_counts"], dtype=np.float64)
    others = [arm for arm in arms if arm != reference and any(r["arm"] == arm for r in results)]
    fig = Figure(figsize=(9.0, 5.0))
    axes = fig.subplots()
    spread = np.linspace(-0.06, 0.06, len(others)) if len(others) > 1 else np.zeros(1)
    for k, arm in enumerate(others):
        differences = class_differences(results, arm, reference)
        means = np.array([d.mean for d in differences])
        half = np.array([
            stats.t.ppf(0.975, d.n - 1) * d.std / np.sqrt(d.n) if d.n > 1 and d.std > 0 else 0.0 for d in differences
        ])  # fmt: skip
        x = counts * 10 ** spread[k]  # a small offset per arm so that markers at one count do not overlap
        axes.errorbar(x, means, yerr=half, fmt="o", capsize=3, label=arm, color=f"C{k}")
    axes.axhline(0.0, color="k", linewidth=1)
    low, high = axes.get_ylim()
    axes.set_ylim(max(low, -100.0), min(high, 100.0))  # a class's top-1 moves by at most 100 points
    axes.set_xscale("log")
    axes.set_xlabel("training images of the class (log scale)")
    axes.set_ylabel(f"top-1 change against {reference} (points)")
    axes.set_title("Per-class change, paired by seed (mean and 95% t interval)")
    if others:
        axes.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def report_text(results: Sequence[dict], arms: Sequence[str], reference: str, header: Sequence[str] = ()) -> str:
    """The markdown report (the plot it links is written by `write_report`)."""
    others = [arm for arm in arms if arm != reference]
    lines = [*header, "", "## Top-1 (%), mean +- std over seeds", "", *top1_lines(results, arms), ""]
    lines += [
        f"## Paired differences against {reference}",
        "",
        f"Points of top-1, mean over seeds of (arm - {reference}) with the same seed; in brackets the p-values of "
        f"the {TEST_NAME}.",
        "",
        *difference_lines(results, arms, reference),
        "",
        *(
            verdict(arm, reference, split, split_difference(results, arm, reference, split))
            for arm in others
            for split in ("few", "all")
        ),  # fmt: skip
        "",
    ]
    term = text_term_lines(results, arms)
    if term:
        lines += [
            "## The text term at the end of training",
            "",
            "Final-epoch VLM-KD loss and its fraction of the chance level (the loss of a contrast that tells nothing "
            "apart): 1.0 means the captions taught nothing.",
            "",
            *term,
            "",
        ]
    lines += [
        f"## Per class: top-1 change against {reference}",
        "",
        f"Paired mean change in points; * where the paired t-test gives p < {ALPHA}.",
        "",
        *class_lines(results, arms, reference),
        "",
        f"![per-class change against training count]({PLOT_FILE})",
        "",
        "## Confusions that moved",
        "",
        "Rate per 100 test images of the true class, mean over seeds; the change is paired by seed.",
        "",
    ]
    for arm in others:
        lines += [f"### {arm}", "", *confusion_lines(results, arm, reference), ""]
    return "\n".join(lines)


def write_report(
    results: Sequence[dict], arms: Sequence[str], reference: str, out: Path, header: Sequence[str] = ()
) -> Path:
    """Write REPORT.md, per_class.png and results.json into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_class_differences(results, arms, reference, out / PLOT_FILE)
    write_text_atomic(out / "results.json", json.dumps(list(results), indent=1) + "\n", durable=False)
    write_text_atomic(out / REPORT_FILE, report_text(results, arms, reference, header) + "\n", durable=False)
    return out / REPORT_FILE
