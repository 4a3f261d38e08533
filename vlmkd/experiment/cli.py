"""`vlmkd experiment`: does VLM-KD help my data? Baseline vs VLM-KD arms over N seeds, paired, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlmkd.arguments import ArgumentParser
from vlmkd.errors import InputError

EXAMPLE = """example:
  vlmkd experiment --train data/train.txt --test data/test.txt --features runs/features \\
      --config mnist_lt --seeds 10 --out runs/ab
  (arms baseline and vlmkd; more with --arm NAME KEY=VALUE..., e.g. --arm balanced contrast_balance=sqrt)
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlmkd experiment",
        description="Train a baseline and one or more VLM-KD arms on your dataset and feature store over N seeds "
        "(the same seeds in every arm), evaluate each run on a held-out list, and write a report: top-1 per "
        "Many/Medium/Few/All split, paired differences with their p-values, the text term against chance, "
        "per-class changes, the confusions that moved and a plot against training counts. Each run is cached, "
        "so a rerun resumes; several processes can share one --out.",
        epilog=EXAMPLE,
    )
    parser.add_argument("--train", help="training list file or ImageFolder (a base setting of every arm)")
    parser.add_argument("--test", required=True, help="held-out list file or ImageFolder every run is evaluated on")
    parser.add_argument("--features", help="caption feature store from vlmkd-encode (a base setting of every arm)")
    parser.add_argument("--config", help="vlmkd-train preset or YAML file of base settings")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a base training setting (repeatable)"
    )
    parser.add_argument(
        "--arm", action="append", nargs="+", default=[], metavar="NAME [KEY=VALUE ...]",
        help="an arm and its own training settings (repeatable); default: baseline (vlmkd_weight=0) and vlmkd",
    )  # fmt: skip
    parser.add_argument("--arms", type=Path, help="YAML file: `arms: {NAME: {KEY: VALUE}}` (and optional `settings:`)")
    parser.add_argument("--reference", default="baseline", help="the arm every other arm is compared with")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per arm (0 .. N-1)")
    parser.add_argument("--out", type=Path, default=Path("vlmkd-experiment"), help="folder of runs and the report")
    parser.add_argument("--many-threshold", type=int, default=100, help="Many: more training images than this")
    parser.add_argument("--few-threshold", type=int, default=20, help="Few: fewer training images than this")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every epoch's checkpoint of each run")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    return parser


def parse_assignments(pairs: list[str], where: str) -> dict[str, Any]:
    """`KEY=VALUE` strings as settings; values are read as YAML scalars or lists (`0.5`, `true`, `[1, 1]`)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{where}: expected KEY=VALUE, got {pair!r}")
        try:
            settings[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"{where}: {pair!r}: the value is not a YAML scalar or list") from None
    return settings


def arms_and_settings(args) -> tuple[tuple, dict[str, Any]]:
    """The arms and the base settings from the flags and the --arms file (flags win)."""
    from vlmkd.config import read_yaml_mapping
    from vlmkd.experiment.runner import Arm

    settings: dict[str, Any] = {}
    arms: dict[str, dict[str, Any]] = {}
    if args.arms is not None:
        data = read_yaml_mapping(args.arms)
        unknown = sorted(set(data) - {"arms", "settings"})
        if unknown or not isinstance(data.get("arms"), dict):
            raise InputError(f"{args.arms}: expected `arms: {{NAME: {{KEY: VALUE}}}}` and optional `settings:`")
        settings |= data.get("settings") or {}
        arms |= {str(name): dict(value or {}) for name, value in data["arms"].items()}
    for name, value in (("train", args.train), ("features", args.features)):
        if value is not None:
            settings[name] = value
    settings |= parse_assignments(args.set, "--set")
    for name, *pairs in args.arm:
        arms[name] = parse_assignments(pairs, f"--arm {name}")
    if not arms:
        if "features" not in settings:
            raise InputError("give --features (a caption feature store) for the default arms, or arms of your own")
        arms = {"baseline": {"vlmkd_weight": 0.0}, "vlmkd": {}}
    if "train" not in settings:
        raise InputError("no training set: pass --train (or `train:` under `settings:` in --arms)")
    return tuple(Arm(name, value) for name, value in arms.items()), settings


def main(argv: list[str] | None = None) -> int:
    from vlmkd.experiment.experiment import ExperimentSpec, run_experiment

    args = build_parser().parse_args(argv)
    arms, settings = arms_and_settings(args)
    spec = ExperimentSpec(
        out=args.out, test=Path(args.test), arms=arms, seeds=args.seeds, config=args.config, settings=settings,
        reference=args.reference, many_threshold=args.many_threshold, few_threshold=args.few_threshold,
        keep_checkpoints=args.keep_checkpoints,
    )  # fmt: skip
    outcome = run_experiment(spec, train=not args.report_only)
    if outcome.report is None:
        print(f"vlmkd experiment: no finished run of the reference arm {spec.reference!r} yet: no report")
        return 0
    if outcome.pending:
        print(f"vlmkd experiment: {len(outcome.pending)} run(s) still training in another process; rerun to add them")
    print(f"report: {outcome.report}")
    return 0
