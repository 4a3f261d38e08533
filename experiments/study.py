"""The MNIST-LT study of issue #27: does VLM-KD cost the tail, and which training options protect it?

For each imbalance factor, `vlmkd.experiment.run_experiment` trains the baseline and, for each text source
(`experiments.sources`), VLM-KD with the settings shipped before the study ("today"), with each training option,
their combination and the library's defaults, over the same seeds; then the positive control's attributes are
probed (`experiments.positive_control`) and `experiments.report` writes RESULTS.md. Every run is cached under
`OUT/ifN/runs/ARM/seedS/`, so a rerun resumes and several processes can share the work.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.arms import BASELINE, VARIANTS, vlmkd_arm
from experiments.sources import SOURCES, study_data, text_features
from vlmkd.arguments import ArgumentParser
from vlmkd.errors import InputError
from vlmkd.experiment import ExperimentSpec, run_experiment

# What every run shares on top of the `mnist_lt` preset: ResNet-32 at width 0.5 on the 28 px digits, on one
# thread (OpenMP threads oversubscribe a shared machine badly; results depend on the thread count).
SETTINGS = {"width": 0.5, "image_size": 28, "num_workers": 0, "threads": 1}
POSITIVE_CONTROL_SOURCE = "attributes"


def study_spec(out: Path, imbalance_factor: float, sources, variants, seeds: int) -> ExperimentSpec:
    """The experiment of one imbalance factor: its data and text sources are made under `out` if missing."""
    data = study_data(out, imbalance_factor)
    features = text_features(out, data, tuple(sources))
    arms = [BASELINE] + [vlmkd_arm(source, features[source], variant) for source in sources for variant in variants]
    return ExperimentSpec(
        out=out, test=data.test_list, arms=tuple(arms), seeds=seeds, config="mnist_lt",
        settings={"train": str(data.train_list), **SETTINGS},
    )  # fmt: skip


def measure_positive_control(spec: ExperimentSpec, results: list[dict]) -> list[dict]:
    """Add retrieval and probes of the slant/thickness attributes to every finished positive-control run (cached
    as `positive_control.json` beside its result; the null is the same seed's baseline)."""
    from experiments.positive_control import AttributeProbe
    from vlmkd.data import load_image_list

    runs = Path(spec.out) / "runs"
    probe = None
    measured = []
    for result in results:
        if not result["arm"].startswith(POSITIVE_CONTROL_SOURCE + "-"):
            measured.append(result)
            continue
        run, baseline = (runs / arm / f"seed{result['seed']}" for arm in (result["arm"], BASELINE.name))
        cache = run / "positive_control.json"
        if not cache.is_file() and (baseline / "train" / "model.safetensors").is_file():
            if probe is None:
                train_list = Path(spec.settings["train"])
                probe = AttributeProbe(load_image_list(train_list), load_image_list(spec.test))
            cache.write_text(json.dumps(probe.measure(run / "train", baseline / "train", result["seed"]), indent=1))
        measured.append(result | ({"positive_control": json.loads(cache.read_text())} if cache.is_file() else {}))
    return measured


def text_facts(out: Path, imbalance_factor: float, sources) -> dict:
    """What each text source can teach, computed once per imbalance factor (cached in `out/text_facts.json`):
    distinct VLM captions per prompt, the class-balanced attribute probe of the shape captions, and the share of
    each caption source's variance that the class and the slant/thickness levels explain."""
    cache = out / "text_facts.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from experiments.positive_control import text_variance_shares
    from experiments.shapes import attribute_probe
    from vlmkd.caption.store import CaptionStore
    from vlmkd.reporting.diversity import distinct_captions

    data = study_data(out, imbalance_factor)
    facts: dict = {}
    if "vlm" in sources:
        store = CaptionStore.open(out / "captions_vlm")
        counts = distinct_captions(store.read_table(), store.prompt_ids)
        facts["vlm_distinct"] = {prompt: distinct for prompt, (_, distinct) in counts.items()}
    if "shapes" in sources:
        facts["shape_probe"] = attribute_probe(data.train, data.test)
    facts["variance_shares"] = {
        source: text_variance_shares(out / f"features_{source}", data.train)
        for source in ("shapes", "attributes")
        if source in sources
    }
    cache.write_text(json.dumps(facts, indent=1))
    return facts


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m experiments mnist-lt",
        description="Baseline vs VLM-KD on the embedded MNIST-LT: three text sources (a tiny random VLM's captions, "
        "label-relevant shape captions, the slant/thickness positive control) x the training options of issue "
        "#27, paired by seed; writes each imbalance factor's REPORT.md and the study's RESULTS.md.",
    )
    parser.add_argument("--out", type=Path, default=Path("vlmkd-study"), help="work folder (data, stores, runs)")
    parser.add_argument("--report", type=Path, default=Path("experiments/RESULTS.md"), help="the study's results")
    parser.add_argument("--imbalance-factors", type=float, nargs="+", default=[100.0, 256.0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per arm (the same in every arm)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    from experiments.report import write_study_report

    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise InputError(f"--variants: unknown {', '.join(unknown)}; variants are {', '.join(VARIANTS)}")
    torch.set_num_threads(SETTINGS["threads"])
    studies = {}
    for factor in args.imbalance_factors:
        spec = study_spec(args.out / f"if{factor:g}", factor, args.sources, args.variants, args.seeds)
        outcome = run_experiment(spec, train=not args.report_only)
        facts = text_facts(Path(spec.out), factor, args.sources)
        studies[factor] = (spec, measure_positive_control(spec, outcome.results), facts)
        print(f"IF {factor:g}: {len(outcome.results)} runs finished; report {outcome.report}", flush=True)
    print(f"results: {write_study_report(studies, args.report)}")
    return 0
