"""`vlmkd demo`: the whole pipeline on the embedded MNIST-LT with a tiny randomly initialised VLM.

data -> caption (tiny random BLIP) -> encode (all-MiniLM-L6-v2, real) -> train (ResNet-32 + VLM-KD) -> eval.
Every stage writes a store under the output directory and a rerun reuses what is finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmkd.arguments import ArgumentParser
from vlmkd.folder_kind import entries, refuse_unless

NOTICE = (
    "NOTE: no real VLM weights are available offline, so the captions come from a tiny *randomly initialised* "
    "BLIP (real architecture, random weights): they are noise. The demo exercises the pipeline end to end; "
    "its accuracies say nothing about VLM-KD itself (see experiments/RESULTS.md for controlled comparisons)."
)

OUTPUTS = ("data", "tiny_blip", "captions", "features", "train", "eval")  # what run_demo writes under its folder


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is; the defaults take a few minutes on 2 CPU cores."""

    max_train_per_class: int | None = None  # None: MNIST-LT from 400 training digits per class (988 images)
    test_per_class: int = 100
    prompts: int = 5  # first k prompts of the default set (G, T1-T4)
    max_new_tokens: int = 12
    epochs: int = 6
    image_size: int = 28
    width: float = 1.0  # ResNet-32 channel multiplier
    batch_size: int = 64
    num_workers: int = 2
    tsne_max: int = 1000
    threads: int | None = 1  # torch CPU threads: OpenMP on a busy 2-core machine can be ~20x slower than 1 thread


def run_demo(out: Path, size: DemoSize = DemoSize(), *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run every stage into `out`; returns the evaluation results (see `evaluate_checkpoint`)."""
    import torch

    from vlmkd.caption import CaptionConfig, GenerationSettings, run_captioning
    from vlmkd.caption.prompts import PromptSet, load_prompt_set
    from vlmkd.data.demo import make_demo_dataset
    from vlmkd.encode.runner import encode_captions
    from vlmkd.evaluate.run import evaluate_checkpoint
    from vlmkd.testing.tiny_models import make_tiny_vlm
    from vlmkd.train.config import read_config_file, resolve_config
    from vlmkd.train.trainer import train

    if size.threads is not None:
        torch.set_num_threads(size.threads)  # for every stage, not only training
    out = Path(out)
    refuse_unless(out, set(), stage="vlmkd demo folder", own=lambda folder: set(entries(folder)) <= set(OUTPUTS))
    print(NOTICE, flush=True)
    data_dir, vlm, captions_dir, features_dir, run_dir, eval_dir = (out / name for name in OUTPUTS)
    data = make_demo_dataset(
        data_dir, max_train_per_class=size.max_train_per_class, test_per_class=size.test_per_class, seed=seed
    )
    counts = data.train.class_counts()
    print(f"[1/5] data: MNIST-LT, {len(data.train)} training images {counts.tolist()}, {len(data.test)} test")
    if not (vlm / "config.json").is_file():
        make_tiny_vlm("blip", vlm, seed=seed, overwrite=True)  # what `vlmkd models make-tiny blip DIR` builds
    prompt_set = load_prompt_set()
    prompt_set = PromptSet(prompt_set.name, prompt_set.prompts[: size.prompts])
    print(f"[2/5] caption: tiny random BLIP, prompts {', '.join(prompt_set.ids)}", flush=True)
    caption_config = CaptionConfig(
        model=vlm,
        out=captions_dir,
        batch_size=32,
        generation=GenerationSettings(max_new_tokens=size.max_new_tokens, seed=seed),
        progress=progress,
        threads=size.threads,
    )
    captions = run_captioning(caption_config, dataset=data.train, prompts=prompt_set).store
    print("[3/5] encode: all-MiniLM-L6-v2 text features", flush=True)
    encode_captions(captions, features_dir, progress=progress)
    print("[4/5] train: ResNet-32 from scratch, Balanced Softmax + VLM-KD", flush=True)
    config = resolve_config(
        read_config_file("mnist_lt"),
        {
            "train": str(data.train_list),
            "output": str(run_dir),
            "features": str(features_dir),
            "task_loss": "balanced_softmax",
            "vlmkd_weight": 1.0,
            "epochs": size.epochs,
            "image_size": size.image_size,
            "width": size.width,
            "batch_size": size.batch_size,
            "threads": size.threads,
            "num_workers": size.num_workers,
            "seed": seed,
            "progress": progress,
        },
    )
    train(config, resume="auto")
    text_term = _text_term(run_dir, size.batch_size, captions)
    print("[5/5] evaluate on the balanced test split", flush=True)
    results = evaluate_checkpoint(
        run_dir,
        data.test_list,
        eval_dir,
        num_workers=size.num_workers,
        tsne_max=size.tsne_max,
        progress=progress,
    )
    return results | {"text_term": text_term}


def _text_term(run: Path, batch_size: int, captions: Any) -> dict[str, Any]:
    """The final epoch's VLM-KD loss against chance (log batch), and how many distinct captions it learnt from."""
    import math

    from vlmkd.caption.store import CaptionStore
    from vlmkd.train.metrics_log import read_metrics

    last = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "epoch"][-1]
    table = CaptionStore.open(Path(getattr(captions, "path", captions))).read_table()
    distinct: dict[str, set[str]] = {}
    for prompt, caption in zip(table["prompt_id"].to_pylist(), table["caption"].to_pylist(), strict=True):
        distinct.setdefault(prompt, set()).add(caption)
    chance = math.log(batch_size)
    return {
        "loss": float(last["vlmkd_loss"]),
        "chance": chance,
        "fraction": float(last["vlmkd_loss"]) / chance,
        "distinct_captions": {prompt: len(texts) for prompt, texts in distinct.items()},
    }


def text_term_summary(term: dict[str, Any]) -> str:
    """One paragraph: the final VLM-KD loss against chance, and what constant captions mean for it."""
    counts = ", ".join(f"{prompt} {n}" for prompt, n in term["distinct_captions"].items())
    line = (
        f"VLM-KD loss at the end: {term['loss']:.3f} = {term['fraction']:.2f} x chance (log batch = "
        f"{term['chance']:.3f}). Distinct captions per prompt: {counts}."
    )
    if max(term["distinct_captions"].values()) <= 1:
        line += (
            " The tiny random VLM wrote one caption for every image: constant captions cannot teach anything, "
            "so this loss cannot fall below chance, whatever the settings. Captions that differ between images "
            "(a real VLM, or your own through `vlmkd caption import`) are what the term learns from; "
            "experiments/RESULTS.md shows it learning from such captions (the positive control)."
        )
    return line


def main(argv: list[str] | None = None) -> int:
    from vlmkd.evaluate.metrics import format_table

    defaults = DemoSize()
    parser = ArgumentParser(
        prog="vlmkd demo",
        description="Run caption -> encode -> train -> eval on the embedded MNIST-LT (IF 100) with a tiny "
        "randomly initialised VLM; prints the Many/Medium/Few/All table and writes the plots.",
    )
    parser.add_argument("--out", default="vlmkd-demo", help="output directory (reruns reuse finished stages)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    parser.add_argument(
        "--prompts",
        type=int,
        default=defaults.prompts,
        choices=range(1, 6),
        help="prompts used, from General, T1, ..., T4",
    )
    parser.add_argument("--max-train-per-class", type=int, default=None, help="smaller, faster dataset")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="training image size, px")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training batch size")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data cut, the tiny VLM and training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    size = DemoSize(
        max_train_per_class=args.max_train_per_class,
        prompts=args.prompts,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    results = run_demo(Path(args.out), size, seed=args.seed, progress=not args.no_progress)
    print()
    print(format_table(results["top1"], title="VLM-KD top-1"))
    for name, path in results["plots"].items():
        note = results["notes"].get(name)
        print(f"plot ({name}): {path}" + (f": {note}" if note else ""))
    print(f"results: {Path(args.out) / 'eval' / 'metrics.json'}")
    print(text_term_summary(results["text_term"]))
    print("(tiny random VLM: the captions are noise; this shows the pipeline, not the method's accuracy)")
    return 0
