"""The experiment's statistics: mean/std per arm and the paired t-test against the baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from vlmkd.cli import import_experiments

import_experiments(Path(__file__).resolve().parents[1])
from experiments.statistics import summarise, verdicts  # noqa: E402  (the package is loaded just above)

ARMS = ("baseline", "vlmkd-captions", "vlmkd-control")


def result(arm: str, seed: int, few: float, all_: float) -> dict:
    return {"arm": arm, "seed": seed, "top1": {"many": 90.0, "medium": 80.0, "few": few, "all": all_}}


def test_summarise_gives_sample_std_and_paired_differences_per_seed() -> None:
    results = [result("baseline", s, few, 60.0 + s) for s, few in enumerate((40.0, 50.0, 45.0))]
    results += [result("vlmkd-captions", s, few, 61.0 + s) for s, few in enumerate((42.0, 49.0, 50.0))]
    table = summarise(results, ARMS)
    few = table["vlmkd-captions"]["few"]
    assert few["n"] == 3
    np.testing.assert_allclose(few["mean"], np.mean([42.0, 49.0, 50.0]))
    np.testing.assert_allclose(few["std"], np.std([42.0, 49.0, 50.0], ddof=1))
    np.testing.assert_allclose(few["delta_mean"], np.mean([2.0, -1.0, 5.0]))
    np.testing.assert_allclose(few["delta_std"], np.std([2.0, -1.0, 5.0], ddof=1))
    assert table["vlmkd-captions"]["all"]["delta_std"] == 0.0  # +1 on every seed


def test_verdicts_agree_with_scipys_paired_t_test() -> None:
    rng = np.random.default_rng(0)
    base_few, base_all = rng.normal(45, 8, 5), rng.normal(70, 5, 5)
    arm_few, arm_all = base_few + rng.normal(1, 6, 5), base_all + rng.normal(9, 1, 5)
    results = [result("baseline", s, base_few[s], base_all[s]) for s in range(5)]
    results += [result("vlmkd-control", s, arm_few[s], arm_all[s]) for s in range(5)]
    (line,) = verdicts(results, ARMS)
    for split, arm, base in (("few", arm_few, base_few), ("all", arm_all, base_all)):
        reference = stats.ttest_rel(arm, base)
        outside = reference.pvalue < 0.05
        assert f"{split} {np.mean(arm - base):+.1f} (t = {reference.statistic:.2f}" in line
        assert ("outside" if outside else "within") in line.split(f"{split} ")[1].split(")")[0]
