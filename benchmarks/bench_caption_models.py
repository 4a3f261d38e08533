"""Tiny BLIP vs tiny LLaVA through the hf engine, at 1 torch thread and at torch's default (one per core).

Why: captioning 988 images with the tiny LLaVA once took 1,035 s (1.0 img/s) on a shared 2-core machine,
against 43 img/s for the tiny BLIP in the demo. This times both models on the same requests (32 demo digits x
the 5 default prompts, batches of 3 images, 32 new tokens, greedy) under both thread counts, in interleaved rounds, and
reports wall and CPU seconds: CPU time shows the cost of OpenMP threads spinning on busy cores.

    python benchmarks/bench_caption_models.py [--rounds 3] [--out benchmarks/results/caption_models.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import load_average, machine, seconds_series

from vlmkd.caption.engines import GenerationSettings, ImageRequest, load_engine
from vlmkd.caption.prompts import load_prompt_set
from vlmkd.data import load_rgb
from vlmkd.data.demo import make_demo_dataset
from vlmkd.testing.tiny_models import make_tiny_vlm

IMAGES = 32
BATCH = 3  # images (15 captions)
TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "caption_models.md")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_dataset(Path(tmp) / "data", max_train_per_class=100, test_per_class=2).train
        prompts = load_prompt_set().prompts
        labels = [data.classnames[data.samples[i].label] for i in range(IMAGES)]
        requests = [
            ImageRequest(load_rgb(data.path(i)), tuple(p.render(labels[i]) for p in prompts)) for i in range(IMAGES)
        ]
        settings = GenerationSettings(TOKENS, False, 1.0, 1.0, 1, 0, "float32")
        engines = {
            kind: load_engine("hf", make_tiny_vlm(kind, Path(tmp) / kind), settings) for kind in ("blip", "llava")
        }
        rows = {(kind, t): (seconds_series(), seconds_series()) for kind in engines for t in (1, default_threads)}
        for engine in engines.values():
            engine.caption(requests[:BATCH])  # warm-up
        for _ in range(args.rounds):
            for (kind, threads), (wall, cpu) in rows.items():
                torch.set_num_threads(threads)
                started, cpu_started = time.perf_counter(), time.process_time()
                for start in range(0, len(requests), BATCH):
                    engines[kind].caption(requests[start : start + BATCH])
                wall.add(time.perf_counter() - started)
                cpu.add(time.process_time() - cpu_started)
    torch.set_num_threads(default_threads)
    lines = [
        "# Tiny BLIP vs tiny LLaVA captioning, 1 thread vs torch's default",
        "",
        f"Machine: {machine()}; load average at the end {load_average()}.",
        f"{IMAGES} images x {len(prompts)} prompts, batches of {BATCH} images, {TOKENS} new tokens, greedy; best of "
        f"{args.rounds} interleaved rounds (median in brackets).",
        "",
        "| model | torch threads | wall s | images/s | CPU s | images per CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    for (kind, threads), (wall, cpu) in rows.items():
        lines.append(
            f"| {kind} | {threads} | {wall.best:.2f} ({wall.median:.2f}) | {IMAGES / wall.best:.1f} | "
            f"{cpu.best:.2f} ({cpu.median:.2f}) | {IMAGES / cpu.best:.1f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
