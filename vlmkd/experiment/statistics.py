"""Paired statistics of an A/B experiment: every arm against a reference arm, seed by seed.

Runs of two arms with the same seed share the model's initialisation and the data order, so the paired
difference removes most of the seed-to-seed spread. Two tests, both two-sided, are reported: the paired t-test
(`scipy.stats.ttest_rel`) and the exact sign-flip permutation test (under the null each seed's difference is
as likely positive as negative; all 2^n sign patterns for n <= 16 seeds, 2^16 random ones above), which does not
assume normal differences (a Few split of a few classes moves in steps of whole test images).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

SPLITS = ("many", "medium", "few", "all")
TEST_NAME = "paired t-test (scipy.stats.ttest_rel) and exact sign-flip permutation test, both two-sided"
_EXACT_UP_TO = 16
_RANDOM_SIGNS = 1 << 16


@dataclass(frozen=True)
class PairedDifference:
    """Arm minus reference over the seeds both have: mean, sample std, n, the t-test and the sign-flip test."""

    mean: float
    std: float
    n: int
    t: float
    p_t: float
    p_sign_flip: float

    @property
    def identical(self) -> bool:
        """Every seed gave exactly the reference's value."""
        return self.n > 0 and self.mean == 0 and self.std == 0


def paired_difference(treated: Sequence[float], control: Sequence[float]) -> PairedDifference:
    """Paired statistics of `treated - control` (same seeds, same order)."""
    difference = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    n = difference.size
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), 0, float("nan"), float("nan"), float("nan"))
    mean = float(difference.mean())
    std = float(difference.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        return PairedDifference(mean, std, n, float("nan"), float("nan"), float("nan"))
    if not np.any(difference - difference[0]):  # the same shift on every seed: no spread to test against
        p = 1.0 if difference[0] == 0 else 0.0
        t = 0.0 if difference[0] == 0 else float(np.sign(difference[0]) * np.inf)
        return PairedDifference(mean, 0.0, n, t, p, sign_flip_p(difference))
    test = stats.ttest_rel(treated, control)
    return PairedDifference(mean, std, n, float(test.statistic), float(test.pvalue), sign_flip_p(difference))


def sign_flip_p(difference: np.ndarray) -> float:
    """Two-sided p of the paired sign-flip permutation test: the share of sign patterns whose |mean| is at least
    the observed one (exact for up to 16 pairs)."""
    difference = np.asarray(difference, dtype=np.float64)
    observed = abs(difference.mean())
    if difference.size <= _EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=difference.size)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(_RANDOM_SIGNS, difference.size))
    means = np.abs(signs @ difference) / difference.size
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def by_seed(results: Sequence[dict], arm: str) -> dict[int, dict]:
    return {r["seed"]: r for r in results if r["arm"] == arm}


def split_difference(results: Sequence[dict], arm: str, reference: str, split: str) -> PairedDifference:
    """`arm` minus `reference` on top-1 of `split`, paired by seed."""
    treated, control = by_seed(results, arm), by_seed(results, reference)
    seeds = sorted(set(treated) & set(control))
    return paired_difference([treated[s]["top1"][split] for s in seeds], [control[s]["top1"][split] for s in seeds])


def split_summary(results: Sequence[dict], arm: str, split: str) -> tuple[float, float, int]:
    """(mean, sample std, n) of `arm`'s top-1 on `split` over its seeds."""
    values = np.array([r["top1"][split] for r in results if r["arm"] == arm and r["top1"][split] is not None])
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return (float(values.mean()) if values.size else float("nan")), std, int(values.size)


def class_differences(results: Sequence[dict], arm: str, reference: str) -> list[PairedDifference]:
    """Per class: `arm` minus `reference` top-1 (%), paired by seed."""
    treated, control = by_seed(results, arm), by_seed(results, reference)
    seeds = sorted(set(treated) & set(control))
    classes = len(next(iter(treated.values()))["per_class"]) if treated else 0
    return [
        paired_difference([treated[s]["per_class"][k] for s in seeds], [control[s]["per_class"][k] for s in seeds])
        for k in range(classes)
    ]


@dataclass(frozen=True)
class ConfusionShift:
    """How often test images of class `true` were called `predicted`, per 100 of them, in both arms."""

    true: int
    predicted: int
    reference_rate: float
    arm_rate: float
    difference: PairedDifference


def confusion_shifts(results: Sequence[dict], arm: str, reference: str, top: int = 5) -> list[ConfusionShift]:
    """The `top` off-diagonal confusions whose rate (per 100 test images of the true class) moved most between
    `reference` and `arm`, paired by seed, largest absolute mean change first."""
    treated, control = by_seed(results, arm), by_seed(results, reference)
    seeds = sorted(set(treated) & set(control))
    if not seeds:
        return []

    def rates(run: dict) -> np.ndarray:
        matrix = np.asarray(run["confusion"], dtype=np.float64)
        return 100.0 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)

    arm_rates = np.stack([rates(treated[s]) for s in seeds])
    reference_rates = np.stack([rates(control[s]) for s in seeds])
    change = (arm_rates - reference_rates).mean(axis=0)
    np.fill_diagonal(change, 0.0)
    order = np.argsort(-np.abs(change), axis=None)[:top]
    shifts = []
    for flat in order:
        true, predicted = np.unravel_index(flat, change.shape)
        if change[true, predicted] == 0:
            break
        shifts.append(
            ConfusionShift(
                int(true),
                int(predicted),
                float(reference_rates[:, true, predicted].mean()),
                float(arm_rates[:, true, predicted].mean()),
                paired_difference(arm_rates[:, true, predicted], reference_rates[:, true, predicted]),
            )
        )
    return shifts
