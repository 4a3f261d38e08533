"""`vlmkd experiment`: every (arm, seed) trained once, paired by seed, resumable, shared through lock files, and a
report whose numbers are the runs' own; captions that say nothing leave the VLM-KD arm identical to the baseline."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _cases import TINY, make_features, write_store, write_tiny_dataset

from vlmkd.errors import InputError
from vlmkd.experiment import Arm, ExperimentSpec, run_experiment
from vlmkd.experiment.cli import main as experiment_main
from vlmkd.experiment.runner import LOCK_FILE, RESULT_FILE, run_one
from vlmkd.train.metrics_log import read_metrics

SETTINGS = {**TINY, "epochs": 2, "batch_size": 4, "warmup_epochs": 0.5}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Baseline, VLM-KD on class captions and VLM-KD on one caption for every image, 2 seeds each."""
    root = tmp_path_factory.mktemp("experiment")
    tiny_dataset = write_tiny_dataset(root / "data")
    captions = make_features(tiny_dataset, root)
    constant = np.broadcast_to(np.linspace(-1, 1, 8, dtype=np.float32), (len(tiny_dataset), 2, 8)).copy()
    write_store(root / "constant", constant, dataset_fingerprint=tiny_dataset.fingerprint())
    spec = ExperimentSpec(
        out=root / "ab", test=tiny_dataset.source, seeds=2, settings={**SETTINGS, "train": str(tiny_dataset.source)},
        arms=(Arm("baseline", {"vlmkd_weight": 0.0}), Arm("vlmkd", {"features": str(captions)}),
              Arm("constant", {"features": str(root / "constant")})),
        many_threshold=5, few_threshold=3,
    )  # fmt: skip
    return spec, run_experiment(spec, progress=False)


def test_every_arm_and_seed_is_trained_once_and_reported(experiment) -> None:
    spec, outcome = experiment
    assert sorted((r["arm"], r["seed"]) for r in outcome.results) == sorted(
        (arm.name, seed) for arm in spec.arms for seed in range(2)
    )
    report = outcome.report.read_text()
    for section in ("Paired differences against baseline", "paired t-test (scipy.stats.ttest_rel)", "Per class",
                    "Confusions that moved", "The text term at the end of training", "per_class.png"):  # fmt: skip
        assert section in report
    assert (spec.out / "per_class.png").stat().st_size > 0
    saved = json.loads((spec.out / "results.json").read_text())
    assert {(r["arm"], r["seed"]) for r in saved} == {(r["arm"], r["seed"]) for r in outcome.results}
    run = spec.out / "runs" / "vlmkd" / "seed1"
    result = json.loads((run / RESULT_FILE).read_text())
    assert result["top1"]["all"] == pytest.approx(100 * np.trace(result["confusion"]) / np.sum(result["confusion"]))
    assert sorted(p.name for p in (run / "train").glob("epoch_*")) == ["epoch_0002"]  # earlier ones pruned
    last = [r for r in read_metrics(run / "train" / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert result["text_term"]["vlmkd_fraction"] == last["vlmkd_fraction"]


def test_captions_that_say_nothing_leave_the_run_identical_to_the_baseline(experiment) -> None:
    spec, outcome = experiment
    runs = {(r["arm"], r["seed"]): r for r in outcome.results}
    for seed in range(2):
        assert runs[("constant", seed)]["confusion"] == runs[("baseline", seed)]["confusion"]
    assert "constant, few: identical to baseline on every one of 2 seeds" in outcome.report.read_text()


def test_a_rerun_trains_nothing_and_a_changed_arm_is_refused(experiment, monkeypatch) -> None:
    spec, outcome = experiment

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(importlib.import_module("vlmkd.train.trainer"), "train", no_training)
    again = run_experiment(spec, progress=False)
    assert [r["top1"] for r in again.results] == [r["top1"] for r in outcome.results]
    changed = ExperimentSpec(**{**spec.__dict__, "arms": (Arm("baseline", {"vlmkd_weight": 0.0, "lr": 0.05}),)})
    with pytest.raises(InputError, match=r"made with other settings .* lr \(0.1 -> 0.05\)"):
        run_experiment(changed, progress=False)


def test_a_run_claimed_by_a_live_process_is_left_to_it_and_a_dead_claim_is_taken_over(experiment) -> None:
    spec, _ = experiment
    plan = spec.plan()
    arm = Arm("late", {"vlmkd_weight": 0.0, "epochs": 1})
    run_dir = plan.run_dir(arm, 0)
    run_dir.mkdir(parents=True)
    host = os.uname().nodename
    (run_dir / LOCK_FILE).write_text(f"{host} {os.getppid()}\n")  # our parent: alive
    assert run_one(plan, arm, 0) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_FILE).write_text(f"{host} {dead.pid}\n")
    assert run_one(plan, arm, 0)["arm"] == "late"
    assert not (run_dir / LOCK_FILE).exists()


def test_the_command_takes_arms_and_settings_and_refuses_bad_ones_in_one_line(tiny_dataset, tmp_path, capsys) -> None:
    base = ["--train", str(tiny_dataset.source), "--test", str(tiny_dataset.source), "--out", str(tmp_path / "ab")]
    with pytest.raises(InputError, match="give --features"):
        experiment_main(base)
    with pytest.raises(InputError, match="expected KEY=VALUE, got 'lr'"):
        experiment_main([*base, "--arm", "baseline", "lr"])
    with pytest.raises(InputError, match="arm 'fast': .*learning_rate"):
        experiment_main([*base, "--arm", "baseline", "vlmkd_weight=0", "--arm", "fast", "learning_rate=0.3"])
    settings = [f"--set={k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    assert experiment_main([*base, *settings, "--seeds", "1", "--arm", "baseline", "vlmkd_weight=0"]) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "ab" / "REPORT.md").is_file()
