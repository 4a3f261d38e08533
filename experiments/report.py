"""experiments/RESULTS.md: the MNIST-LT study's tables, from the runs of every imbalance factor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.arms import VARIANTS
from experiments.attributes import ATTRIBUTES
from experiments.shapes import FEATURE_NAMES
from experiments.sources import SOURCES
from vlmkd.experiment.report import (
    cell,
    class_lines,
    confusion_lines,
    plot_class_differences,
    significant,
    verdict,
)
from vlmkd.experiment.statistics import TEST_NAME, PairedDifference, split_difference, split_summary

PROBES = ("pixels", "untrained", "baseline", "vlmkd")
SOURCE_WORDS = {
    "vlm": "the tiny random VLM's captions (one caption for every image: uninformative)",
    "shapes": "label-relevant captions: the digit named, its shape in attributes shared across classes",
    "attributes": "the positive control: slant and stroke thickness, not the digit",
}


def _mean_std(values) -> str:
    array = np.asarray(values, dtype=np.float64)
    return f"{array.mean():.2f} +- {array.std(ddof=1):.2f}" if array.size > 1 else f"{array.mean():.2f}"


def arm_table(results: list[dict], arms: list[str]) -> list[str]:
    """Top-1 per split, paired Few / All differences to the baseline and the text term's fraction of chance."""
    lines = [
        "| arm | seeds | Many | Medium | Few | All | Few - baseline (p t / sign-flip) | All - baseline (p) | "
        "VLM-KD loss / chance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        summaries = [split_summary(results, arm, split) for split in ("many", "medium", "few", "all")]
        if not summaries[0][2]:
            continue
        cells = [f"{mean:.1f} +- {std:.1f}" if n > 1 else f"{mean:.1f}" for mean, std, n in summaries]
        fractions = [r["text_term"]["vlmkd_fraction"] for r in results if r["arm"] == arm and r.get("text_term")]
        deltas = ["-", "-"] if arm == "baseline" else [
            cell(split_difference(results, arm, "baseline", split)) for split in ("few", "all")
        ]  # fmt: skip
        fraction = _mean_std(fractions) if fractions else "-"
        lines.append(f"| {arm} | {summaries[0][2]} | " + " | ".join([*cells, *deltas, fraction]) + " |")
    return lines


def positive_control_lines(results: list[dict], arms: list[str]) -> list[str]:
    """Per positive-control arm: loss against chance, retrieval gain over the null per attribute, and the
    issue's targets (loss <= 0.8 x chance, both gains >= +20 points)."""
    lines = [
        "| arm | seeds | VLM-KD loss / chance | " + " | ".join(f"{a} retrieval / null (gain)" for a in ATTRIBUTES)
        + " | targets met |",
        "|---|---|---|" + "---|" * len(ATTRIBUTES) + "---|",
    ]  # fmt: skip
    for arm in arms:
        measured = [r for r in results if r["arm"] == arm and "positive_control" in r]
        if not measured:
            continue
        fraction = float(np.mean([r["text_term"]["vlmkd_fraction"] for r in measured]))
        cells, met = [], fraction <= 0.8
        for name in ATTRIBUTES:
            found = [r["positive_control"]["retrieval"][name] for r in measured]
            null = [r["positive_control"]["retrieval_null"][name] for r in measured]
            gain = float(np.mean(np.subtract(found, null)))
            met = met and gain >= 20
            cells.append(f"{np.mean(found):.1f} / {np.mean(null):.1f} ({gain:+.1f})")
        lines.append(
            f"| {arm} | {len(measured)} | {fraction:.3f} | " + " | ".join(cells) + f" | {'yes' if met else 'no'} |"
        )
    return lines


def identical_lines(results: list[dict], arms: list[str]) -> list[str]:
    """Per uninformative-caption arm: on how many seeds the run's predictions equal the baseline's exactly."""
    baseline = {r["seed"]: r["confusion"] for r in results if r["arm"] == "baseline"}
    lines = []
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm and r["seed"] in baseline]
        if runs:
            same = sum(r["confusion"] == baseline[r["seed"]] for r in runs)
            lines.append(f"- {arm}: every test prediction equal to the baseline's on {same} of {len(runs)} seeds")
    return lines


def fact_lines(facts: dict) -> list[str]:
    """What the text sources can teach at this imbalance factor (`experiments.study.text_facts`)."""
    lines = []
    if "vlm_distinct" in facts:
        counts = ", ".join(f"{prompt} {n}" for prompt, n in facts["vlm_distinct"].items())
        lines.append(f"- `vlm`: distinct captions per prompt over the training images: {counts}.")
    if "shape_probe" in facts:
        probe = facts["shape_probe"]
        lines.append(
            "- `shapes`: a class-balanced logistic regression on the caption attributes alone (the "
            f"{len(FEATURE_NAMES)} measured attributes, no pixels) reaches {probe['few']:.1f}% top-1 on Few and "
            f"{probe['all']:.1f}% on All."
        )
    for source, shares in facts.get("variance_shares", {}).items():
        parts = ", ".join(f"{name} {share:.1f}%" for name, share in shares.items())
        lines.append(f"- `{source}`: share of the conditioned caption features' variance explained by {parts}.")
    return lines


def _same_as_default_lines(studies: dict[float, tuple]) -> list[str]:
    """A line per variant whose every run predicted exactly what the same seed's `default` run did (one whose
    settings come to the defaults on `mnist_lt`): its seeds are a subset of the defaults', not other evidence."""
    by_arm: dict[tuple[float, str], dict[int, list]] = {}  # (factor, arm) -> seed -> confusion matrix
    for factor, (_, results, _) in studies.items():
        for r in results:
            by_arm.setdefault((factor, r["arm"]), {})[r["seed"]] = r["confusion"]
    lines = []
    for variant in VARIANTS:
        if variant == "default":
            continue
        pairs = [
            (confusion, defaults[seed])
            for factor in studies
            for source in SOURCES
            for defaults in [by_arm.get((factor, f"{source}-default"), {})]
            for seed, confusion in by_arm.get((factor, f"{source}-{variant}"), {}).items()
            if seed in defaults
        ]
        if pairs and all(mine == theirs for mine, theirs in pairs):
            lines.append(f"  - `{variant}` is what the defaults do here: each of its {len(pairs)} runs predicted "
                         "exactly what the same seed's `default` run did")  # fmt: skip
    return lines


def glance_lines(studies: dict[float, tuple]) -> list[str]:
    """The whole study in one table: a row per variant, a column per imbalance factor and text source, each cell
    Few / All minus the baseline, paired by seed (`*`: `significant`, p < 0.05 in both tests; `=`: every
    prediction of every seed equal to the baseline's; the seed count where it is under 10; empty: not run)."""
    columns = [
        (factor, source)
        for factor, (_, results, _) in studies.items()
        for source in SOURCES
        if any(r["arm"].startswith(source + "-") for r in results)
    ]
    ran = [v for v in VARIANTS if any(r["arm"] == f"{s}-{v}" for f, s in columns for r in studies[f][1])]
    lines = ["| variant | " + " | ".join(f"IF {factor:g} `{source}`" for factor, source in columns) + " |",
             "|---|" + "---|" * len(columns)]  # fmt: skip
    for variant in ran:
        cells = []
        for factor, source in columns:
            results = studies[factor][1]
            few, every = (split_difference(results, f"{source}-{variant}", "baseline", s) for s in ("few", "all"))
            cells.append(_glance_cell(few, every))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _glance_cell(few: PairedDifference, every: PairedDifference) -> str:
    if few.n == 0:
        return ""
    seeds = f" ({few.n} seed{'s' if few.n > 1 else ''})" if few.n < 10 else ""
    if few.identical and every.identical:
        return "=" + seeds

    def marked(difference: PairedDifference) -> str:
        return f"{difference.mean:+.1f}{'*' if significant(difference) else ''}"

    return f"{marked(few)} / {marked(every)}{seeds}"


def write_study_report(studies: dict[float, tuple], report: Path) -> Path:
    """RESULTS.md and one per-class figure per imbalance factor beside it, from {factor: (spec, results, facts)}."""
    ran_variants = {r["arm"].split("-", 1)[1] for _, results, _ in studies.values() for r in results if "-" in r["arm"]}
    lines = [
        "# MNIST-LT: does the text term cost the tail, and which training options protect it?",
        "",
        "Made by `python -m experiments mnist-lt` (through `vlmkd.experiment`, the harness of `vlmkd experiment`); "
        "every number below is computed from the runs. Paired differences are arm minus baseline with the same "
        f"seed; p-values are those of the {TEST_NAME}.",
        "",
        "- Model: CIFAR-style ResNet-32 at width 0.5 (32 features) on the 28 px digits, the `mnist_lt` preset (16 "
        "epochs, batch 64, SGD + warm-up + cosine, Balanced Softmax, no crops or flips), 1 thread.",
        "- Text sources (all encoded by all-MiniLM-L6-v2; all but the VLM's imported with `vlmkd caption import`):",
        *(f"  - `{source}`: {SOURCE_WORDS[source]}" for source in SOURCES),
        "- VLM-KD variants (arm `SOURCE-VARIANT`): `today` = the settings shipped before this study (weight 1, "
        "temperature 0.5 fixed, centred text and images, linear projection, no adaptor bias); each option on top "
        "of it; `default` = the library's defaults now.",
        *(f"  - `{name}`: {settings}" for name, settings in VARIANTS.items() if settings and name in ran_variants),
        *_same_as_default_lines(studies),
        "",
        "## At a glance: Few / All minus the baseline (points)",
        "",
        "Paired by seed; `*` where both tests give p < 0.05 for that split (uncorrected: over this many cells a few "
        "would pass by chance); `=` where every test prediction of every seed equals the baseline's; an empty cell "
        "was not run. The sections below give each arm's accuracies, p-values and fraction of chance.",
        "",
        *glance_lines(studies),
        "",
    ]
    for factor, (spec, results, facts) in studies.items():
        ran = {r["arm"] for r in results}
        arms = [arm.name for arm in spec.arms if arm.name in ran]  # arms asked for but never run are left out
        counts = next((r["train_counts"] for r in results), [])
        lines += [f"## Imbalance factor {factor:g}", "", f"Training images per class (zero .. nine): {counts}.", ""]
        lines += [*fact_lines(facts), ""]
        lines += [*arm_table(results, arms), ""]
        for source in SOURCES:
            source_arms = [a for a in arms if a.startswith(source + "-")]
            if source == "vlm":
                lines += identical_lines(results, source_arms) + [""]
            if source == "attributes":
                lines += ["Positive control (retrieval of each test digit's attribute level through the adaptor "
                          "vs the same adaptor on the baseline's features; chance 33.3%):", "",
                          *positive_control_lines(results, source_arms), ""]  # fmt: skip
        shown = [a for a in ("baseline", "shapes-today", "shapes-default") if a in arms]
        if len(shown) > 1 and any(r["arm"] == "baseline" for r in results):
            figure = report.with_name(f"per_class_if{factor:g}.png")
            plot_class_differences(results, shown, "baseline", figure)
            lines += ["Per class (label-relevant captions):", "", *class_lines(results, shown, "baseline"), "",
                      f"![per-class change, IF {factor:g}]({figure.name})", ""]  # fmt: skip
            for arm in shown[1:]:
                lines += [f"Confusions that moved most, {arm}:", "", *confusion_lines(results, arm, "baseline"), ""]
        lines += [verdict(a, "baseline", s, split_difference(results, a, "baseline", s))
                  for a in arms if a != "baseline" for s in ("few", "all")] + [""]  # fmt: skip
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    everything = {f"{factor:g}": results for factor, (_, results, _) in studies.items()}
    report.with_name("results.json").write_text(json.dumps(everything, indent=1) + "\n")
    return report
