"""The experiment's statistics: mean / sample std per arm and split, and paired differences to the baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

SPLITS = ("many", "medium", "few", "all")


def summarise(results: list[dict], arms: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample std and count per arm and split, plus the paired per-seed difference to the baseline."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    baseline = {r["seed"]: r["top1"] for r in results if r["arm"] == "baseline"}
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        if not rows:
            continue
        table[arm] = {}
        for split in SPLITS:
            values = np.array([r["top1"][split] for r in rows], dtype=np.float64)
            deltas = np.array([r["top1"][split] - baseline[r["seed"]][split] for r in rows if r["seed"] in baseline])
            table[arm][split] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                "n": int(values.size),
                "delta_mean": float(deltas.mean()) if deltas.size else float("nan"),
                "delta_std": float(deltas.std(ddof=1)) if deltas.size > 1 else float("nan"),
            }
    return table


def paired_test(results: list[dict], arm: str, split: str) -> tuple[float, float, float, int]:
    """(mean difference, t, two-sided p, n) of `arm` minus the baseline on `split`, paired by seed (ttest_rel)."""
    baseline = {r["seed"]: r["top1"][split] for r in results if r["arm"] == "baseline"}
    pairs = [(r["top1"][split], baseline[r["seed"]]) for r in results if r["arm"] == arm and r["seed"] in baseline]
    if len(pairs) < 2:
        return float("nan"), float("nan"), float("nan"), len(pairs)
    treated, control = (np.array(side, dtype=np.float64) for side in zip(*pairs, strict=True))
    difference = treated - control
    if not np.any(difference - difference[0]):  # every seed moved by the same amount: no variance to test
        return float(difference[0]), float("inf") * np.sign(difference[0]), 0.0 if difference[0] else 1.0, len(pairs)
    test = stats.ttest_rel(treated, control)
    return float(difference.mean()), float(test.statistic), float(test.pvalue), len(pairs)


def verdicts(results: list[dict], arms: Sequence[str], alpha: float = 0.05) -> list[str]:
    """One line per arm: is its paired Few/All difference to the baseline outside seed noise (paired t-test)?"""
    lines = []
    for arm in arms:
        if arm == "baseline" or not any(r["arm"] == arm for r in results):
            continue
        parts = []
        for split in ("few", "all"):
            mean, t, p, n = paired_test(results, arm, split)
            if n < 2:
                parts.append(f"{split}: too few seeds")
                continue
            if mean == 0 and not np.isfinite(t):
                parts.append(f"{split} +0.0 (identical to the baseline on every seed)")
                continue
            where = "outside" if p < alpha else "within"
            parts.append(f"{split} {mean:+.1f} (t = {t:.2f}, p = {p:.3f}, {where} seed noise)")
        lines.append(f"- {arm}: " + "; ".join(parts))
    return lines
