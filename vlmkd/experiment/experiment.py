"""`run_experiment`: every arm of an A/B experiment over N seeds, paired by seed, resumable per run, and its report.

The order is seed-major (every arm of seed 0, then of seed 1...), so an experiment stopped early still holds
whole pairs. Several processes (or cluster jobs on one shared folder) can run the same experiment: each run is
claimed by a lock file, and a process skips runs that another live process is training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlmkd.errors import InputError
from vlmkd.experiment.runner import Arm, RunPlan, finished_result, resolve_arm, run_one


@dataclass(frozen=True)
class ExperimentSpec:
    """An A/B experiment: arms (the first named `reference` is what the others are compared with), seeds, data.

    `config` is a preset name or YAML file of `vlmkd-train` settings; `settings` are shared by every arm and the
    arms' own settings override both. `test` is the held-out list file every run is evaluated on.
    """

    out: Path
    test: Path
    arms: tuple[Arm, ...]
    seeds: int = 10
    config: str | Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    reference: str = "baseline"
    many_threshold: int = 100
    few_threshold: int = 20
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise InputError(f"arm names must be unique, got {', '.join(names)}")
        if self.reference not in names:
            raise InputError(f"the reference arm {self.reference!r} is not among the arms ({', '.join(names)})")
        for arm in self.arms:
            if not arm.name or "/" in arm.name or arm.name.startswith("."):
                raise InputError(f"arm name {arm.name!r}: use letters, digits, '-' and '_' (it names a folder)")
        if self.seeds < 1:
            raise InputError(f"seeds must be at least 1, got {self.seeds}")

    def plan(self) -> RunPlan:
        from vlmkd.train.config import read_config_file

        return RunPlan(
            out=Path(self.out),
            test=Path(self.test),
            config=read_config_file(self.config) if self.config else {},
            common=dict(self.settings),
            many_threshold=self.many_threshold,
            few_threshold=self.few_threshold,
            keep_checkpoints=self.keep_checkpoints,
        )


@dataclass(frozen=True)
class ExperimentResult:
    """The finished runs' results, the runs another process is still training, and the report (if written)."""

    results: list[dict]
    pending: list[tuple[str, int]]
    report: Path | None


def run_experiment(spec: ExperimentSpec, *, train: bool = True, progress: bool = True) -> ExperimentResult:
    """Train every unfinished (arm, seed) of `spec` (skipped with `train=False`), then write the report."""
    plan = spec.plan()
    if not Path(spec.test).exists():
        raise InputError(f"--test {spec.test}: no such file or directory (expected the held-out list file)")
    for arm in spec.arms:  # every arm's settings and inputs are checked before the first run starts
        resolve_arm(plan, arm, 0).check_paths()
    jobs = [(arm, seed) for seed in range(spec.seeds) for arm in spec.arms]
    results, pending = [], []
    bar = tqdm(total=len(jobs), desc="experiment", unit="run", disable=not progress)
    for arm, seed in jobs:
        result = run_one(plan, arm, seed) if train else finished_result(plan, arm, seed)
        if result is None:
            pending.append((arm.name, seed))
        else:
            results.append(result)
            bar.set_postfix_str(f"{arm.name} seed {seed}: few {result['top1']['few']:.1f}")
        bar.update(1)
    bar.close()
    report = None
    if any(r["arm"] == spec.reference for r in results):
        from vlmkd.experiment.report import write_report

        header = report_header(spec, results, pending)
        report = write_report(results, [a.name for a in spec.arms], spec.reference, Path(spec.out), header)
    return ExperimentResult(results, pending, report)


def report_header(spec: ExperimentSpec, results: list[dict], pending: list[tuple[str, int]]) -> list[str]:
    """What the experiment was: data and splits, shared settings, each arm's own settings, seeds and compute."""
    from vlmkd.data.splits import class_splits

    first = results[0]
    counts = first["train_counts"]
    splits = class_splits(counts, spec.many_threshold, spec.few_threshold)
    trained = sum(r.get("seconds", 0.0) for r in results)
    lines = [
        f"# A/B experiment: {', '.join(a.name for a in spec.arms if a.name != spec.reference)} vs {spec.reference}, "
        "paired by seed",
        "",
        f"Made by `vlmkd experiment` (every number below is computed from `{Path(spec.out) / 'runs'}`).",
        "",
        f"- Training set: {sum(counts)} images in {len(counts)} classes, per class (largest first): "
        f"{sorted(counts, reverse=True)}; test set `{spec.test}`.",
        f"- Splits: Many > {spec.many_threshold} training images ({len(splits['many'])} classes), Few < "
        f"{spec.few_threshold} ({len(splits['few'])}), Medium the rest ({len(splits['medium'])}).",
        f"- Base settings: {spec.config or 'vlmkd-train defaults'}"
        + (f", with {_settings_text(spec.settings)}" if spec.settings else ""),
        "- Arms (their own settings on top):",
        *(f"  - `{arm.name}`: {_settings_text(arm.settings) or 'the base settings'}" for arm in spec.arms),
        f"- Seeds: {spec.seeds} per arm, the same seeds in every arm (initialisation, data order, augmentation); "
        f"{len(results)} runs finished, {trained / 3600:.1f} h of training in all.",
    ]
    if pending:
        lines.append(f"- Still running in another process: {', '.join(f'{a} seed {s}' for a, s in pending)}.")
    return lines


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())
