"""Captioning throughput (images/s) of vlmkd's batched `hf` engine against a one-image-at-a-time loop.

Model: the tiny random-init BLIP of `vlmkd.testing.build_tiny_blip` (real architecture and `generate`, no
real weights exist offline), greedy, 32 new tokens, one prompt per image (so images/s = captions/s).
Rows, all reading the same PNG files:
- loop: plain transformers, decode + processor + `generate` for one image at a time (the baseline);
- bare batched: plain transformers, decode + processor + `generate` on batches of 32 (the ceiling);
- vlmkd: the whole `run_captioning` stage (threaded decoding, request building, batched engine, shards
  written atomically every 32 images) at batch 8/16/32, with the share of wall time spent writing shards.
Timed repetitions are interleaved across rows (shared machines are noisy); best-of-N and median reported.

    python benchmarks/bench_captioning.py            # writes benchmarks/results/captioning.md
    python benchmarks/bench_captioning.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import Series, load_average, machine, rate_series, seconds_series
from PIL import Image

from vlmkd.caption import CaptionConfig, GenerationSettings, load_engine, run_captioning
from vlmkd.caption.engines.hf import HFEngine
from vlmkd.caption.prompts import parse_prompt_set
from vlmkd.data import ImageList, load_image_list
from vlmkd.data.images import load_rgb
from vlmkd.testing import build_tiny_blip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "Describe this image in detail."
SHARD_IMAGES = 32
TARGET_SPEEDUP, TARGET_STORE_SHARE = 8.0, 0.03
RESULTS = Path(__file__).parent / "results" / "captioning.md"


@dataclass(frozen=True)
class Row:
    """One way of captioning the images."""

    name: str
    batch_size: int


@dataclass
class Result:
    row: Row
    rates: Series = field(default_factory=rate_series)  # images/s of each timed repetition
    # process CPU time per image (all threads): less sensitive to a busy machine than wall
    cpu_ms: Series = field(default_factory=seconds_series)
    store_shares: Series = field(default_factory=seconds_series)  # share of wall time writing shards (vlmkd rows)


def make_images(folder: Path, count: int, size: int = 64) -> ImageList:
    """`count` random RGB PNGs in two classes, with a list file; returns the loaded dataset."""
    rng = np.random.default_rng(0)
    lines = []
    for k in range(count):
        relative = f"img/{k % 2}/{k}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / relative)
        lines.append(f"{relative} {k % 2}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    return load_image_list(folder / "train.txt")


def bare_generate(engine: HFEngine, dataset: ImageList, batch_size: int) -> None:
    """Plain transformers: decode, process and generate `batch_size` images at a time; no vlmkd code."""
    for start in range(0, len(dataset), batch_size):
        images = [load_rgb(dataset.path(i)) for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = engine.processor(images=images, text=[PROMPT] * len(images), return_tensors="pt", padding="longest")
        with torch.inference_mode():
            output = engine.model.generate(**inputs, max_new_tokens=engine.settings.max_new_tokens, do_sample=False)
        engine.tokenizer.batch_decode(output, skip_special_tokens=True)


def timed(function: Callable[[], float | None], count: int) -> tuple[float, float, float | None]:
    """(images/s, CPU ms per image, the function's result)."""
    start, cpu = time.perf_counter(), time.process_time()
    share = function()
    return count / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / count, share


def run(num_images: int, repeats: int, batches: tuple[int, ...], max_new_tokens: int) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="vlmkd-bench-captioning-"))
    try:
        dataset = make_images(work / "data", num_images)
        model = build_tiny_blip(work / "blip")
        engine = load_engine("hf", model, GenerationSettings(max_new_tokens=max_new_tokens))
        prompts = parse_prompt_set(f"prompts:\n  - {{id: G, template: '{PROMPT}'}}\n", "<bench>")

        def vlmkd(batch: int) -> Callable[[], float]:
            def go() -> float:
                out = work / f"store-{batch}"
                shutil.rmtree(out, ignore_errors=True)
                config = CaptionConfig(
                    model=model,
                    out=out,
                    batch_size=batch,
                    num_shards=max(1, num_images // SHARD_IMAGES),
                    progress=False,
                )
                report = run_captioning(config, dataset=dataset, engine=engine, prompts=prompts)
                return report.store_seconds / report.seconds

            return go

        rows: dict[Row, Callable[[], float | None]] = {
            Row("loop: transformers, one image per generate", 1): lambda: bare_generate(engine, dataset, 1),
            Row(f"bare batched: transformers, batch {max(batches)}", max(batches)): lambda: bare_generate(
                engine, dataset, max(batches)
            ),
        }
        rows |= {Row(f"vlmkd run_captioning, batch {b}", b): vlmkd(b) for b in batches}
        results = {row: Result(row) for row in rows}
        for function in rows.values():  # warm-up: first-call allocations, lazy imports
            function()
        for _ in range(repeats):
            for row, function in rows.items():
                rate, cpu_ms, share = timed(function, num_images)
                results[row].rates.add(rate)
                results[row].cpu_ms.add(cpu_ms)
                if share is not None:
                    results[row].store_shares.add(share)
        return list(results.values())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[Result]) -> str:
    loop = next(r for r in results if r.row.batch_size == 1)
    lines = [
        "| row | batch | images/s best | images/s median | speed-up vs loop (median) | CPU ms/image (median) "
        "| shard writing, share of wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        share = f"{100 * r.store_shares.median:.2f}%" if r.store_shares else "-"
        lines.append(
            f"| {r.row.name} | {r.row.batch_size} | {r.rates.best:.1f} | {r.rates.median:.1f} | "
            f"{r.rates.median / loop.rates.median:.1f}x | {r.cpu_ms.median:.0f} | {share} |"
        )
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    loop = next(r for r in results if r.row.batch_size == 1)
    best_vlmkd = max((r for r in results if r.store_shares), key=lambda r: r.row.batch_size)
    bare = next(r for r in results if r.row.name.startswith("bare"))
    speedup = best_vlmkd.rates.median / loop.rates.median
    share = best_vlmkd.store_shares.median
    met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    return (
        f"At batch {best_vlmkd.row.batch_size} vlmkd runs {speedup:.1f}x the loop (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{met}); bare batched generate {bare.rates.median / loop.rates.median:.1f}x, "
        f"so the stage keeps {100 * best_vlmkd.rates.median / bare.rates.median:.0f}% of the bare speed. "
        "Writing shards takes "
        f"{100 * share:.2f}% of wall time (target <= {100 * TARGET_STORE_SHARE:.0f}%: "
        f"{'met' if share <= TARGET_STORE_SHARE else 'NOT met'})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; prints, writes nothing")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    images, repeats = (32, 1) if args.quick else (args.images, args.repeats)
    results = run(images, repeats, (8, 16, 32), args.max_new_tokens)
    report = "\n".join(
        [
            "# Captioning throughput: batched `hf` engine vs one image at a time",
            "",
            f"Tiny random-init BLIP (`build_tiny_blip`), {images} random 64 px PNGs, one prompt, greedy, "
            f"{args.max_new_tokens} new tokens; {repeats} interleaved repetitions after a warm-up. "
            f"{machine()}, load average {load_average()} at the end of the run.",
            "",
            table(results),
            "",
            verdict(results),
            "",
            "Reproduce: `python benchmarks/bench_captioning.py`.",
        ]
    )
    print(report)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report + "\n")
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
