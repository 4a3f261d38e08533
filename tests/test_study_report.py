"""experiments/report.py's study-at-a-glance table, from hand-made results with known paired differences."""

from __future__ import annotations

from experiments.report import glance_lines


def result(arm: str, seed: int, few: float, every: float) -> dict:
    return {"arm": arm, "seed": seed, "top1": {"many": 90.0, "medium": 80.0, "few": few, "all": every}}


def test_each_cell_is_few_and_all_minus_the_baseline_marked_where_both_tests_agree() -> None:
    baseline = [result("baseline", s, 60.0 + s, 80.0 + s % 3) for s in range(10)]
    # shapes-warm-2: Few +3 on every seed but one (+1): significant by both tests; All +0.5 / -0.5 alternating.
    warm = [result("shapes-warm-2", s, 60.0 + s + (1.0 if s == 0 else 3.0), 80.0 + s % 3 + (0.5 if s % 2 else -0.5))
            for s in range(10)]  # fmt: skip
    inert = [result("vlm-default", s, 60.0 + s, 80.0 + s % 3) for s in range(10)]  # equal to the baseline
    few_seeds = [result("shapes-default", s, 58.0 + s, 79.0 + s % 3) for s in range(3)]  # -2 / -1 on 3 seeds
    studies = {256.0: (None, baseline + warm + inert + few_seeds, {})}
    header, rule, *rows = glance_lines(studies)
    assert header == "| variant | IF 256 `vlm` | IF 256 `shapes` |" and rule == "|---|---|---|"
    assert rows == [
        "| warm-2 |  | +2.8* / +0.0 |",
        "| default | = | -2.0 / -1.0 (3 seeds) |",
    ]
