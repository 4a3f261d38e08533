"""experiments/RESULTS.md and its figures, from the experiment's per-(arm, seed) results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.attributes import ATTRIBUTES
from experiments.statistics import SPLITS, summarise, verdicts
from vlmkd.train.config import TrainConfig

PROBES = ("pixels", "untrained", "baseline", "vlmkd")


def _mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    std = array.std(ddof=1) if array.size > 1 else float("nan")
    return f"{array.mean():.2f} +- {std:.2f}" if abs(array.mean()) < 10 else f"{array.mean():.1f} +- {std:.1f}"


def text_term_rows(results: list[dict], arms: list[str]) -> list[str]:
    """Markdown rows: final VLM-KD loss, its chance level and fraction of it, and the temperature per arm."""
    rows = []
    for arm in arms:
        terms = [r["text_term"] for r in results if r["arm"] == arm and "vlmkd_loss" in r.get("text_term", {})]
        if not terms:
            continue
        chance = float(np.mean([_chance_level(t) for t in terms]))
        loss = _mean_std([t["vlmkd_loss"] for t in terms])
        fraction = _mean_std([t["vlmkd_fraction"] for t in terms])
        temperature = _mean_std([t["temperature"] for t in terms]) if all("temperature" in t for t in terms) else "-"
        rows.append(f"| {arm} | {loss} | {chance:.3f} | {fraction} | {temperature} | {len(terms)} |")
    return rows


def _chance_level(term: dict) -> float:
    """The run's chance level of the text term: log(batch), or less with class positives or class negatives."""
    return term["vlmkd_loss"] / term["vlmkd_fraction"]


def target_lines(results: list[dict], arm: str) -> list[str]:
    """The issue's targets for a positive control, against what was measured (mean over seeds)."""
    rows = [r for r in results if r["arm"] == arm and "positive_control" in r]
    if not rows:
        return []
    fraction = float(np.mean([r["text_term"]["vlmkd_fraction"] for r in rows]))
    of_batch = float(np.mean([r["text_term"]["vlmkd_loss"] / r["chance"] for r in rows]))
    chance = float(np.mean([_chance_level(r["text_term"]) for r in rows]))
    if abs(chance - rows[0]["chance"]) < 1e-6:
        measured = f"{fraction:.2f} x log(batch)"
    else:
        measured = f"{fraction:.2f} x its chance level {chance:.2f} ({of_batch:.2f} x log(batch))"
    lines = [
        f"- {arm} ({len(rows)} seeds): final VLM-KD loss {measured} "
        f"(target <= 0.80: {'met' if fraction <= 0.8 else 'not met'})"
    ]
    for name in ATTRIBUTES:
        gain = float(np.mean([r["positive_control"]["retrieval"][name] - r["positive_control"]["retrieval_null"][name]
                              for r in rows]))  # fmt: skip
        lines.append(f"  - {name}: retrieval {gain:+.1f} points above the null (target >= +20: "
                     f"{'met' if gain >= 20 else 'not met'})")  # fmt: skip
    return lines


def positive_control_lines(results: list[dict], arm: str) -> list[str]:
    """Retrieval vs null and linear probes per attribute (mean +- std over seeds, paired retrieval gain)."""
    measured = [r["positive_control"] for r in results if r["arm"] == arm and "positive_control" in r]
    if not measured:
        return []
    lines = [
        "| attribute | retrieval through the adaptor (%) | null: same adaptor, baseline features (%) | "
        "gain (paired) | chance |",
        "|---|---|---|---|---|",
    ]
    for name, levels in ATTRIBUTES.items():
        retrieval = [m["retrieval"][name] for m in measured]
        null = [m["retrieval_null"][name] for m in measured]
        gains = [a - b for a, b in zip(retrieval, null, strict=True)]
        lines.append(
            f"| {name} | {_mean_std(retrieval)} | {_mean_std(null)} | {_mean_std(gains)} | {100 / len(levels):.1f} |"
        )
    lines += [
        "",
        "Linear probe (logistic regression on frozen features, fitted on the training split, test accuracy %):",
        "",
        "| attribute | " + " | ".join(PROBES) + " |",
        "|---|" + "---|" * len(PROBES),
    ]
    for name in ATTRIBUTES:
        cells = [_mean_std([m["probe"][probe][name] for m in measured]) for probe in PROBES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(results: list[dict], table: dict, arms: list[str], prompt_ablation: dict[int, str], path: Path) -> Path:
    """Four panels: Few/All per arm; prompt-count ablation; VLM-KD loss vs chance; positive-control retrieval."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(13.0, 8.4))
    (top_left, top_right), (bottom_left, bottom_right) = fig.subplots(2, 2)
    shown = [a for a in arms if a in table]
    x = np.arange(len(shown))
    for offset, split, colour in ((-0.2, "few", "C3"), (0.2, "all", "C0")):
        means = [table[a][split]["mean"] for a in shown]
        stds = [table[a][split]["std"] for a in shown]
        top_left.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, color=colour, label=split.capitalize())
    top_left.set_xticks(x, shown, rotation=30, ha="right", fontsize=8)
    top_left.set_ylabel("test top-1 (%)")
    top_left.set_title(f"MNIST-LT (IF 100), mean +- std over {table[shown[0]]['all']['n']} seeds")
    top_left.legend()
    counts = [k for k, name in prompt_ablation.items() if name in table]
    for split, colour in (("few", "C3"), ("all", "C0")):
        means = [table[prompt_ablation[k]][split]["mean"] for k in counts]
        stds = [table[prompt_ablation[k]][split]["std"] for k in counts]
        top_right.errorbar(counts, means, yerr=stds, marker="o", capsize=3, color=colour, label=f"VLM-KD {split}")
        if "baseline" in table:
            top_right.axhline(table["baseline"][split]["mean"], color=colour, linestyle="--", linewidth=1,
                              label=f"baseline {split}")  # fmt: skip
    top_right.set_xticks(counts)
    top_right.set_xlabel("prompts per image (G, T1, T2, T3, T4 in order)")
    top_right.set_ylabel("test top-1 (%)")
    top_right.set_title("Prompt-count ablation (tiny random VLM captions)")
    top_right.legend(fontsize=8)
    text_arms = [a for a in shown if any(r["arm"] == a and r.get("text_term") for r in results)]
    fractions = [[r["text_term"]["vlmkd_fraction"] for r in results if r["arm"] == a] for a in text_arms]
    spread = [np.std(f, ddof=1) if len(f) > 1 else 0 for f in fractions]
    bottom_left.bar(range(len(text_arms)), [np.mean(f) for f in fractions], yerr=spread, capsize=3, color="C2")
    bottom_left.axhline(1.0, color="k", linestyle="--", linewidth=1, label="chance level")
    bottom_left.axhline(0.8, color="C3", linestyle=":", linewidth=1, label="target of the positive control")
    bottom_left.set_xticks(range(len(text_arms)), text_arms, rotation=30, ha="right", fontsize=8)
    bottom_left.set_ylabel("final VLM-KD loss / chance level")
    bottom_left.set_title("Does the text term learn? (1 = chance)")
    bottom_left.legend(fontsize=8)
    arms_measured = sorted({r["arm"] for r in results if "positive_control" in r})
    if arms_measured:
        names = list(ATTRIBUTES)
        positions = np.arange(len(names))
        bars = [(arm, "retrieval", arm) for arm in arms_measured]
        bars.append((arms_measured[0], "retrieval_null", "null: same adaptor, baseline features"))
        width = 0.8 / len(bars)
        for k, (arm, key, label) in enumerate(bars):
            measured = [r["positive_control"] for r in results if r["arm"] == arm and "positive_control" in r]
            values = [[m[key][n] for m in measured] for n in names]
            bottom_right.bar(positions - 0.4 + width * (k + 0.5), [np.mean(v) for v in values], width=width,
                             label=label, color=f"C{k + 2}" if key == "retrieval" else "C7",
                             yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values], capsize=3)  # fmt: skip
        bottom_right.axhline(100 / 3, color="k", linestyle="--", linewidth=1, label="chance (3 levels)")
        bottom_right.set_xticks(positions, names)
        bottom_right.set_ylabel("test image -> attribute caption retrieval (%)")
        bottom_right.set_title("Positive control: through the adaptor")
        bottom_right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(
    results: list[dict],
    size,
    data,
    diversity: dict[str, int],
    report: Path,
    text_shares: dict[str, dict[str, float]] | None = None,
) -> str:
    """Write `report` (markdown), `results.png` and `results.json` beside it; return the markdown.

    `text_shares[source]` is the share (%) of that text source's conditioned caption variance each grouping
    (class, attribute levels) explains (`experiments.positive_control.text_variance_shares`)."""
    from experiments.run import ARM_NAMES, POSITIVE_CONTROLS, PROMPT_ABLATION

    arms = [a for a in ARM_NAMES if any(r["arm"] == a for r in results)]
    table = summarise(results, arms)
    figure = plot(results, table, arms, PROMPT_ABLATION, report.with_name("results.png"))
    counts = data.train.class_counts().tolist()
    seconds = sum(r["seconds"] for r in results)
    seeds = table["baseline"]["all"]["n"] if "baseline" in table else "?"
    lines = [
        "# Experiment: baseline vs VLM-KD on the embedded MNIST-LT",
        "",
        "Produced by `vlmkd experiment` (every number below is measured by it; rerun to reproduce).",
        "",
        f"- Data: MNIST-LT, imbalance factor 100, training counts per class {counts} ({sum(counts)} images); "
        "balanced test split of 100 digits per class. Many > 100, Few < 20 training images.",
        f"- Model: CIFAR-style ResNet-32 at width {size.width} ({size.image_size} px), randomly initialised; "
        f"{size.epochs} epochs, batch {size.batch_size}, SGD + warmup + cosine, no random crop or flip (the "
        f"`mnist_lt` preset); task loss {size.task_loss}.",
        f"- VLM-KD: lambda = {size.vlmkd_weight}, the library's defaults for everything else (docs/training.md: "
        "text features centred per prompt and scaled, image features centred over the batch and projected, no "
        f"adaptor bias, temperature fixed at {TrainConfig().temperature:g}, one prompt sampled per image per "
        "step); instance positives "
        "(same-label positives in `-classpos`), in-batch negatives (only same-class ones in `-within`).",
        "- Text sources, all encoded by all-MiniLM-L6-v2: **captions** from a tiny *randomly initialised* BLIP "
        "(no real VLM weights exist offline) with the default prompts G, T1-T4; **control**: one short class "
        'description per image ("a handwritten digit three", 4 templates), imported with `vlmkd caption import`; '
        "**attributes** (the positive control): each digit's slant and stroke thickness measured from its pixels, "
        "binned into terciles within its class (so the label says nothing about them), worded with 4 long "
        "paraphrase templates so that two images' captions share most of their words (raw cosine ~0.98), "
        "imported with `vlmkd caption import`.",
    ]
    if diversity:
        lines.append(
            f"- Caption diversity of the tiny VLM: distinct captions per prompt over the {sum(counts)} training "
            "images: " + ", ".join(f"{prompt} {n}" for prompt, n in diversity.items()) + " (1 means one caption for "
            "every image: such text carries no image or class information, and no objective can learn from it)."
        )
    lines += [
        f"- Seeds: {seeds} per arm (model init, data order, augmentation); total compute {seconds / 60:.0f} min "
        "on a shared 2-core CPU.",
        "",
        "## Top-1 (%), mean +- std over seeds",
        "",
        "| arm | Many | Medium | Few | All | Few - baseline (paired) | All - baseline (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, splits in table.items():
        cells = [f"{splits[s]['mean']:.1f} +- {splits[s]['std']:.1f}" for s in SPLITS]
        deltas = [f"{splits[s]['delta_mean']:+.1f} +- {splits[s]['delta_std']:.1f}" for s in ("few", "all")]
        lines.append(f"| {arm} | " + " | ".join(cells + (["-", "-"] if arm == "baseline" else deltas)) + " |")
    lines += [
        "",
        "Prompt-count ablation (the paper's Fig. 3): `vlmkd-captions-p1/p2/p3` use the first 1/2/3 prompts, "
        "`vlmkd-captions` all 5. Paired differences use the same seed's baseline.",
        "",
        "## Does the text term learn? Final-epoch VLM-KD loss against chance",
        "",
        "| arm | final VLM-KD loss | chance level | fraction of chance | temperature | seeds |",
        "|---|---|---|---|---|---|",
        *text_term_rows(results, arms),
        "",
        "The chance level is the loss of a contrast that tells nothing apart: log(batch) with instance positives "
        "and in-batch negatives, the mean of log(batch / same-label count) with class positives, the mean of "
        "log(class count in the batch) with negatives within each class.",
        "",
    ]
    measured_arms = [arm for arm in POSITIVE_CONTROLS if positive_control_lines(results, arm)]
    if measured_arms:
        lines += [
            "## Positive control: did the caption attributes reach the encoder?",
            "",
            "Retrieval: each test digit's attribute level is picked as the closest (through the run's adaptor) of "
            "the mean training captions of the three levels; the null applies the same adaptor to the baseline's "
            "features (same seed). Attribute levels are within-class terciles, so chance is 33.3%. "
            "`vlmkd-attributes`: captions state slant and thickness only; `vlmkd-attributes-class`: the same "
            'captions also name the digit ("a ... handwritten three ..."), as a real VLM\'s would; '
            "`vlmkd-attributes-class-within`: those captions with negatives only within each class "
            "(`--negatives class`).",
            "",
        ]
        if text_shares:
            names = list(next(iter(text_shares.values())))
            lines += [
                "Where the captions differ: share (%) of each text source's conditioned caption features' variance "
                "explained by the class and by each attribute's level (what the contrast can pick up first):",
                "",
                "| text | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
                *(
                    f"| {source} | " + " | ".join(f"{shares[n]:.1f}" for n in names) + " |"
                    for source, shares in text_shares.items()
                ),
                "",
            ]
        lines += ["Targets of the positive control (computed):", ""]
        for arm in measured_arms:
            lines += target_lines(results, arm)
        lines.append("")
        for arm in measured_arms:
            lines += [f"### {arm}", "", *positive_control_lines(results, arm), ""]
    lines += [
        f"![results]({figure.name})",
        "",
        "## Reading (paired t-test per arm vs baseline, scipy.stats.ttest_rel, computed)",
        "",
        *verdicts(results, arms),
        "",
        f"Caveats: with {seeds} seeds a paired t-test detects only large effects, and {2 * (len(table) - 1)} "
        f"comparisons at 95% give about {0.05 * 2 * (len(table) - 1):.1f} false 'outside' by chance; an effect "
        "that also appears with the uninformative captions is not evidence that caption *content* helps.",
        "",
    ]
    text = "\n".join(lines)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    report.with_name("results.json").write_text(json.dumps({"table": table, "runs": results}, indent=2))
    return text
