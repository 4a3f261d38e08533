"""`vlmkd experiment`: baseline vs VLM-KD over seeds on the embedded MNIST-LT, with the class-text control,
the prompt-count ablation and the positive control (captions of per-image attributes), tables and figures.

Each (arm, seed) is trained, evaluated and cached in `OUT/runs/ARM-seedS/result.json`, so an interrupted
experiment resumes. Run it from a source checkout with `vlmkd experiment`, which loads this package from
the working directory (`vlmkd.cli.import_experiments`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from experiments.statistics import SPLITS
from vlmkd.arguments import ArgumentParser
from vlmkd.data import ImageList
from vlmkd.data.demo import DemoDataset
from vlmkd.errors import InputError

# The class-text control: each image gets one short description of its class (template chosen by its
# index), so the text carries the class and nothing about the particular image.
CONTROL_TEMPLATES = (
    "a handwritten {label}",
    "a photo of the {label}",
    "an image of a {label}",
    "the {label}, written by hand",
)


@dataclass(frozen=True)
class Arm:
    """One training recipe of the experiment: a text source (or none) and a prompt subset."""

    name: str
    source: str | None  # "captions", "control", "attributes" or None (baseline)
    prompts: tuple[str, ...] | None = None
    positives: str = "instance"
    negatives: str = "batch"


ARMS = (
    Arm("baseline", None),
    Arm("vlmkd-captions", "captions"),
    Arm("vlmkd-control", "control"),
    # Same-class descriptions are near-identical; as in-batch negatives they fight the class signal, so the
    # control is also run with same-label pairs as positives.
    Arm("vlmkd-control-classpos", "control", positives="class"),
    Arm("vlmkd-captions-p1", "captions", ("G",)),
    Arm("vlmkd-captions-p2", "captions", ("G", "T1")),
    Arm("vlmkd-captions-p3", "captions", ("G", "T1", "T2")),
    Arm("vlmkd-attributes", "attributes"),  # the positive control
    Arm("vlmkd-attributes-class", "attributes_class"),  # ... with captions that also name the digit
    # ... contrasted only within each class: the class words then cannot lower the loss, the attributes must.
    Arm("vlmkd-attributes-class-within", "attributes_class", negatives="class"),
)
ARM_NAMES = tuple(arm.name for arm in ARMS)
PROMPT_ABLATION = {1: "vlmkd-captions-p1", 2: "vlmkd-captions-p2", 3: "vlmkd-captions-p3", 5: "vlmkd-captions"}
POSITIVE_CONTROL = "vlmkd-attributes"
POSITIVE_CONTROLS = (POSITIVE_CONTROL, "vlmkd-attributes-class", "vlmkd-attributes-class-within")


@dataclass(frozen=True)
class ExperimentSize:
    """Per-run budget on top of the `mnist_lt` preset; every VLM-KD setting not named here is the library's default.

    Width 0.5 (8/16/32 channels) keeps 9 arms x 5 seeds within about half an hour on a 2-core CPU. 16 epochs
    (the preset's): at 8 the positive control's slant did not reach the encoder (docs/training.md).
    """

    seeds: int = 5
    epochs: int = 16
    image_size: int = 28
    width: float = 0.5
    batch_size: int = 64
    vlmkd_weight: float = 1.0
    task_loss: str = "balanced_softmax"
    max_new_tokens: int = 12
    num_workers: int = 0
    threads: int = 1  # OpenMP threads oversubscribe a shared machine badly


def class_caption_file(dataset: ImageList, path: Path, templates: tuple[str, ...] = CONTROL_TEMPLATES) -> Path:
    """A JSONL caption file (prompt "D") whose caption of each image describes its class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index, sample in enumerate(dataset.samples):
            text = templates[index % len(templates)].format(label=dataset.classnames[sample.label])
            handle.write(json.dumps({"image_index": index, "prompt_id": "D", "caption": text}) + "\n")
    return path


def prepare_text(out: Path, size: ExperimentSize, sources: set[str]) -> tuple[DemoDataset, dict[str, Path]]:
    """The dataset and the feature store of every text source in `sources`, all cached under `out`."""
    from experiments.positive_control import import_attribute_captions
    from vlmkd.caption.transfer import import_captions
    from vlmkd.data.demo import make_demo_dataset
    from vlmkd.encode.runner import encode_captions
    from vlmkd.encode.text_encoder import load_text_encoder

    data = make_demo_dataset(out / "data")
    encoder = load_text_encoder(None)
    stores: dict[str, Path] = {}
    if "captions" in sources:
        stores["captions"] = _tiny_vlm_captions(data.train, out, size)
    if "control" in sources:
        source = class_caption_file(data.train, out / "captions_control.jsonl")
        stores["control"] = import_captions(source, data.train, out / "captions_control", progress=False).store.path
    if "attributes" in sources:
        stores["attributes"] = import_attribute_captions(data.train, out / "captions_attributes")
    if "attributes_class" in sources:
        stores["attributes_class"] = import_attribute_captions(
            data.train, out / "captions_attributes_class", with_class=True
        )
    features = {
        name: encode_captions(store, out / f"features_{name}", encoder=encoder, progress=False).path
        for name, store in stores.items()
    }
    return data, features


def _tiny_vlm_captions(train: ImageList, out: Path, size: ExperimentSize) -> Path:
    from vlmkd.caption import CaptionConfig, GenerationSettings, run_captioning
    from vlmkd.testing.tiny_models import make_tiny_vlm

    vlm = out / "tiny_blip"
    if not (vlm / "config.json").is_file():
        make_tiny_vlm("blip", vlm, seed=0, overwrite=True)  # what `vlmkd models make-tiny blip DIR` builds
    config = CaptionConfig(model=vlm, out=out / "captions", batch_size=32)
    config.generation = GenerationSettings(max_new_tokens=size.max_new_tokens)
    return run_captioning(config, dataset=train).store.path


def text_term(run: Path) -> dict[str, float]:
    """The last epoch's VLM-KD loss, its fraction of chance (log batch) and the temperature, from metrics.jsonl."""
    from vlmkd.train.metrics_log import read_metrics

    last = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    return {k: last[k] for k in ("vlmkd_loss", "vlmkd_fraction", "temperature") if k in last}


def run_arm(arm: Arm, seed: int, out: Path, data: DemoDataset, features: dict[str, Path], size: ExperimentSize) -> dict:
    """Train and evaluate one (arm, seed); the result is cached in `result.json` and reused on a rerun."""
    from vlmkd.evaluate.run import evaluate_checkpoint
    from vlmkd.train.config import read_config_file, resolve_config
    from vlmkd.train.trainer import train

    run = out / "runs" / f"{arm.name}-seed{seed}"
    result_file = run / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    overrides = {
        "train": str(data.train_list),
        "output": str(run),
        "task_loss": size.task_loss,
        "epochs": size.epochs,
        "image_size": size.image_size,
        "width": size.width,
        "batch_size": size.batch_size,
        "num_workers": size.num_workers,
        "threads": size.threads,
        "seed": seed,
        "progress": False,
    }
    if arm.source is not None:
        overrides |= {"features": str(features[arm.source]), "vlmkd_weight": size.vlmkd_weight}
        overrides |= {"prompts": list(arm.prompts) if arm.prompts else None, "positives": arm.positives}
        overrides |= {"negatives": arm.negatives}
    started = time.perf_counter()
    train(resolve_config(read_config_file("mnist_lt"), overrides), resume="auto")
    evaluation = evaluate_checkpoint(run, data.test_list, run / "eval", plots=False, num_workers=size.num_workers)
    result = {
        "arm": arm.name,
        "seed": seed,
        "top1": {split: evaluation["top1"][split]["top1"] for split in SPLITS},
        "chance": math.log(size.batch_size),
    }
    if arm.source is not None:
        result["text_term"] = text_term(run)
    result["seconds"] = time.perf_counter() - started
    result_file.write_text(json.dumps(result, indent=2))
    return result


def measure_positive_control(result: dict, out: Path, probe) -> dict:
    """Add the positive control's retrieval and probes to a finished vlmkd-attributes result (cached beside it).

    Measured after training, once the same seed's baseline exists (its features are the retrieval null), so
    arms can be trained by separate processes.
    """
    run, baseline = (out / "runs" / f"{name}-seed{result['seed']}" for name in (result["arm"], "baseline"))
    cache = run / "positive_control.json"
    if not cache.is_file():
        if not (baseline / "model.safetensors").is_file():
            return result
        cache.write_text(json.dumps(probe.measure(run, baseline, result["seed"]), indent=2))
    return result | {"positive_control": json.loads(cache.read_text())}


def caption_diversity(captions: Path) -> dict[str, int]:
    """Distinct captions per prompt id: how much the VLM's text can say about individual images at all."""
    from vlmkd.caption.store import CaptionStore

    table = CaptionStore.open(captions).read_table()
    distinct: dict[str, set[str]] = {}
    for prompt, caption in zip(table["prompt_id"].to_pylist(), table["caption"].to_pylist(), strict=True):
        distinct.setdefault(prompt, set()).add(caption)
    return {prompt: len(texts) for prompt, texts in distinct.items()}


def _claim(out: Path, size: ExperimentSize) -> None:
    """Cached runs are reused only under the settings they were made with: refuse a directory made otherwise."""
    settings_file = out / "settings.json"
    settings = {k: v for k, v in asdict(size).items() if k != "seeds"}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise InputError(f"{out}: holds runs made with {settings_file.read_text()}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings))


def build_parser() -> ArgumentParser:
    defaults = ExperimentSize()
    parser = ArgumentParser(
        prog="vlmkd experiment",
        description="Baseline vs VLM-KD over seeds on the embedded MNIST-LT: tiny-VLM captions, a class-text "
        "control, a prompt-count ablation and a positive control (captions of each digit's slant and stroke "
        "thickness). Each (arm, seed) is cached, so an interrupted experiment resumes. Runs from a source checkout.",
    )
    parser.add_argument("--out", default="vlmkd-experiment", help="work directory (stores, runs, cached results)")
    parser.add_argument("--report", default="experiments/RESULTS.md", help="markdown results file")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds per arm (>= 5 to claim anything)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--width", type=float, default=defaults.width, help="ResNet-32 width multiplier")
    parser.add_argument("--vlmkd-weight", type=float, default=defaults.vlmkd_weight)
    parser.add_argument("--arms", default=",".join(ARM_NAMES), help="comma-separated subset of arms")
    return parser


def main(argv: list[str] | None = None) -> int:
    from experiments.positive_control import AttributeProbe, text_variance_shares
    from experiments.report import write_report

    args = build_parser().parse_args(argv)
    size = ExperimentSize(
        seeds=args.seeds, epochs=args.epochs, image_size=args.image_size, width=args.width,
        vlmkd_weight=args.vlmkd_weight,
    )  # fmt: skip
    wanted = [name for name in args.arms.split(",") if name]
    unknown = sorted(set(wanted) - set(ARM_NAMES))
    if unknown:
        raise InputError(f"--arms: unknown arm(s) {', '.join(unknown)}; arms are {', '.join(ARM_NAMES)}")
    chosen = [arm for arm in ARMS if arm.name in wanted]
    out, report = Path(args.out), Path(args.report)
    torch.set_num_threads(size.threads)
    _claim(out, size)
    data, features = prepare_text(out, size, {arm.source for arm in chosen if arm.source})
    probe = AttributeProbe(data.train, data.test) if any(a.name in POSITIVE_CONTROLS for a in chosen) else None
    results = []
    for seed in range(size.seeds):  # seed-major: an interrupted experiment still has whole seeds
        for arm in chosen:
            result = run_arm(arm, seed, out, data, features, size)
            results.append(result)
            top1, term = result["top1"], result.get("text_term", {})
            text = f" vlmkd {term['vlmkd_fraction']:.2f} x chance" if "vlmkd_fraction" in term else ""
            print(
                f"{arm.name:<24} seed {seed}: few {top1['few']:.1f} all {top1['all']:.1f}{text} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    if probe is not None:
        results = [measure_positive_control(r, out, probe) if r["arm"] in POSITIVE_CONTROLS else r for r in results]
    diversity = caption_diversity(out / "captions") if "captions" in features else {}
    shares = {
        source: text_variance_shares(features[source], data.train)
        for source in ("control", "attributes", "attributes_class")
        if source in features
    }
    text = write_report(results, size, data, diversity, report, text_shares=shares)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
