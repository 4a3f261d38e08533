"""The A/B harness's statistics: paired differences with scipy's paired t-test, the exact sign-flip test, per-class
changes and the confusions that moved."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vlmkd.experiment.statistics import confusion_shifts, paired_difference, sign_flip_p, split_difference


def result(arm: str, seed: int, few: float, all_: float, confusion=None) -> dict:
    run = {"arm": arm, "seed": seed, "top1": {"many": 90.0, "medium": 80.0, "few": few, "all": all_}}
    return run | ({"confusion": confusion} if confusion is not None else {})


def test_paired_difference_agrees_with_scipys_paired_t_test() -> None:
    rng = np.random.default_rng(0)
    control = rng.normal(60, 8, 10)
    treated = control + rng.normal(1.5, 3, 10)
    got = paired_difference(treated, control)
    reference = stats.ttest_rel(treated, control)
    assert got.n == 10 and got.mean == pytest.approx(np.mean(treated - control))
    assert got.std == pytest.approx(np.std(treated - control, ddof=1))
    assert got.t == pytest.approx(reference.statistic) and got.p_t == pytest.approx(reference.pvalue)


def test_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme() -> None:
    # Five equal gains: only all-plus and all-minus reach |mean| 1 among the 32 sign patterns.
    assert sign_flip_p(np.ones(5)) == pytest.approx(2 / 32)
    rng = np.random.default_rng(1)
    difference = rng.normal(0.5, 1.0, 9)
    extreme = 0
    for mask in range(1 << 9):  # every sign pattern, one by one
        signs = np.array([-1.0 if mask >> k & 1 else 1.0 for k in range(9)])
        extreme += abs((signs * difference).mean()) >= abs(difference.mean()) - 1e-12
    assert sign_flip_p(difference) == pytest.approx(extreme / (1 << 9))


def test_identical_seeds_and_a_constant_shift_are_reported_without_a_t_statistic() -> None:
    same = paired_difference([70.0, 60.0, 65.0], [70.0, 60.0, 65.0])
    assert same.identical and same.p_t == 1.0
    shifted = paired_difference([71.0, 61.0, 66.0], [70.0, 60.0, 65.0])
    assert not shifted.identical and shifted.p_t == 0.0 and shifted.t == np.inf


def test_split_difference_pairs_only_the_seeds_both_arms_have() -> None:
    results = [result("baseline", s, few, 70.0) for s, few in enumerate((40.0, 50.0, 45.0))]
    results += [result("vlmkd", s, few, 71.0) for s, few in ((0, 42.0), (2, 50.0), (5, 99.0))]
    got = split_difference(results, "vlmkd", "baseline", "few")
    assert got.n == 2 and got.mean == pytest.approx(np.mean([2.0, 5.0]))


def test_confusion_shifts_rank_the_moved_pairs_by_their_rate_per_hundred() -> None:
    base = [[90, 10, 0], [0, 50, 0], [0, 0, 20]]
    moved = [[90, 0, 10], [0, 45, 5], [0, 0, 20]]  # 0 -> 1 became 0 -> 2; 1 -> 2 appeared
    results = [result("baseline", s, 0, 0, base) for s in range(3)]
    results += [result("vlmkd", s, 0, 0, moved) for s in range(3)]
    shifts = confusion_shifts(results, "vlmkd", "baseline", top=5)
    assert [(s.true, s.predicted) for s in shifts[:2]] in ([(0, 1), (0, 2)], [(0, 2), (0, 1)])
    by_pair = {(s.true, s.predicted): s for s in shifts}
    assert by_pair[(0, 1)].reference_rate == 10.0 and by_pair[(0, 1)].arm_rate == 0.0
    assert by_pair[(1, 2)].arm_rate == pytest.approx(10.0) and len(shifts) == 3
