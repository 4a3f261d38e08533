"""SIGKILL `vlmkd eval` while it writes its outputs: the previous results stay whole, a rerun replaces them whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cases import write_flat_dataset

from vlmkd.cli import main as vlmkd_main

from ._kill import KillPoint, killed, run_and_kill, run_cli, tree_bytes

pytestmark = pytest.mark.faults

# Units are files in the staging directory (`.eval.PID.tmp`): a kill after the first and after the second plot.
POINTS = (KillPoint(1), KillPoint(2))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny run on 24 small PNGs in 3 classes, evaluated once into `eval/`."""
    work = tmp_path_factory.mktemp("eval-faults")
    write_flat_dataset(work / "data", 24, "list.txt")
    argv = ["train", "--train", str(work / "data" / "list.txt"), "--output", str(work / "run"), "--arch", "resnet32",
            "--width", "0.25", "--image-size", "8", "--batch-size", "8", "--epochs", "1", "--num-workers", "0",
            "--threads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    return work


def eval_args(work: Path) -> list:
    return ["eval", work / "run", work / "data" / "list.txt", "--out", work / "eval", "--num-workers", "0"]


def staged_files(work: Path):
    def count() -> int:
        return sum(1 for staging in work.glob(".eval.*.tmp") for _ in staging.iterdir())

    return count


def test_killed_eval_keeps_the_previous_results_whole_and_a_rerun_replaces_them(work: Path, figures) -> None:
    first = run_cli(eval_args(work), work)
    assert first.returncode == 0, first.stderr
    (work / "eval" / "metrics.json").write_text('{"marker": "the previous evaluation"}\n')  # tell old from new
    previous = tree_bytes(work / "eval")
    kills = 0
    for point in POINTS:
        run = run_and_kill(eval_args(work), work, staged_files(work), point)
        assert killed(run), (run.returncode, run.stderr)
        kills += 1
        assert tree_bytes(work / "eval") == previous  # nothing new beside (or instead of) the old results
    final = run_cli(eval_args(work), work)
    assert final.returncode == 0, final.stderr
    results = json.loads((work / "eval" / "metrics.json").read_text())
    assert "top1" in results and "marker" not in results
    assert sorted(tree_bytes(work / "eval")) == sorted(previous)  # the same set of files, all new
    assert not list(work.glob(".eval.*"))  # the killed runs' staging directories were swept
    figures["eval"].append({"kill_points": kills, "files_lost": 0, "files_mixed": 0})
