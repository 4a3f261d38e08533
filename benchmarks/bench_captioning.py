"""Captioning throughput (images/s) of vlmkd's `hf` engine: batching, and sharing each image's work among its prompts.

Part `batching`: the tiny random-init BLIP of `vlmkd.testing.build_tiny_blip`, greedy, 32 new tokens, one prompt per
image (so images/s = captions/s); rows all reading the same PNG files:
- loop: plain transformers, decode + processor + `generate` for one image at a time (the baseline);
- bare batched: plain transformers, decode + processor + `generate` on batches of 32 (the ceiling);
- vlmkd: the whole `run_captioning` stage (threaded decoding, request building, batched engine, shards
  written atomically every 32 images) at batch 8/16/32, with the share of wall time spent writing shards.

Part `sharing`: tiny LLaVA-NeXT with LLaVA-NeXT-7B's image-token counts (`make-tiny llava-next`) and tiny LLaVA,
the 5 default prompts, photo-sized images, batches of 3 images (15 captions, about the old default of 16
requests), greedy: the engine captioning each image once for all its prompts against the same engine captioning
prompt by prompt (the path before, the baseline), at equal captions (checked), with the vision tower's rows and
the text model's prefill and decode tokens counted by hooks (`vlmkd.testing.work_counters`). Its report ends
with the analytic cost of LLaVA-NeXT-7B on an H100 (`captioning_cost.py`).

Timed repetitions are interleaved across rows (shared machines are noisy); best-of-N and median reported.

    python benchmarks/bench_captioning.py                  # both parts: results/captioning.md, captioning_sharing.md
    python benchmarks/bench_captioning.py --part sharing
    python benchmarks/bench_captioning.py --quick          # small smoke run, prints only
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import (
    Series,
    benchmark_parser,
    interleave,
    load_average,
    machine,
    markdown_table,
    rate_series,
    seconds_series,
    timer,
    write_image_dataset,
    write_report,
)
from captioning_cost import cost_table
from PIL import Image

from vlmkd.caption import CaptionConfig, GenerationSettings, ImageRequest, load_engine, run_captioning
from vlmkd.caption.engines.hf import HFEngine
from vlmkd.caption.prompts import load_prompt_set, parse_prompt_set
from vlmkd.data import ImageList
from vlmkd.data.images import load_rgb
from vlmkd.testing import build_tiny_blip, make_tiny_vlm
from vlmkd.testing.work_counters import WorkCounts, counting_work

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "Describe this image in detail."
SHARD_IMAGES = 32
TARGET_SPEEDUP, TARGET_STORE_SHARE = 8.0, 0.03
RESULTS = Path(__file__).parent / "results" / "captioning.md"
SHARING_RESULTS = Path(__file__).parent / "results" / "captioning_sharing.md"
SHARING_MODELS = ("llava-next", "llava")
PHOTO_SIZES = [(500, 375), (375, 500), (640, 480), (500, 333), (480, 640), (500, 500)]  # (w, h), ImageNet-like
SHARING_BATCH = 3  # images per engine call: 15 captions, about the old default of 16 requests
TARGET_SHARED_SPEEDUP = 3.0  # images/s of the tiny LLaVA-NeXT on the CPU


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


def bare_generate(engine: HFEngine, dataset: ImageList, batch_size: int) -> None:
    """Plain transformers: decode, process and generate `batch_size` images at a time; no vlmkd code."""
    for start in range(0, len(dataset), batch_size):
        images = [load_rgb(dataset.path(i)) for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = engine.processor(images=images, text=[PROMPT] * len(images), return_tensors="pt", padding="longest")
        with torch.inference_mode():
            output = engine.model.generate(**inputs, max_new_tokens=engine.settings.max_new_tokens, do_sample=False)
        engine.tokenizer.batch_decode(output, skip_special_tokens=True)


def timed(function: Callable[[], float | None], count: int) -> Callable[[], tuple[float, float, float | None]]:
    """A row: (images/s, CPU ms per image, the function's result) of one call."""

    def one_round() -> tuple[float, float, float | None]:
        start, cpu = time.perf_counter(), time.process_time()
        share = function()
        return count / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / count, share

    return one_round


def run(num_images: int, repeats: int, batches: tuple[int, ...], max_new_tokens: int) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="vlmkd-bench-captioning-"))
    try:
        dataset = write_image_dataset(work / "data", num_images, size=64, classes=2)
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
        for function in rows.values():  # warm-up: first-call allocations, lazy imports
            function()
        measured = interleave({row: timed(function, num_images) for row, function in rows.items()}, rounds=repeats)
        return [
            Result(row, rate_series(r for r, _, _ in rounds), seconds_series(c for _, c, _ in rounds),
                   seconds_series(s for _, _, s in rounds if s is not None))
            for row, rounds in measured.items()
        ]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[Result]) -> str:
    loop = next(r for r in results if r.row.batch_size == 1)
    header = [
        "row",
        "batch",
        "images/s best",
        "images/s median",
        "speed-up vs loop (median)",
        "CPU ms/image (median)",
        "shard writing, share of wall",
    ]
    rows = [
        [
            r.row.name,
            r.row.batch_size,
            f"{r.rates.best:.1f}",
            f"{r.rates.median:.1f}",
            f"{r.rates.median / loop.rates.median:.1f}x",
            f"{r.cpu_ms.median:.0f}",
            f"{100 * r.store_shares.median:.2f}%" if r.store_shares else "-",
        ]
        for r in results
    ]
    return markdown_table(header, rows)


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


# ------------------------------------------------------------------------------------------------------ sharing
@dataclass
class Sharing:
    """One model captioned both ways: rates per timed repetition and the work counted once."""

    model: str
    image_tokens: float  # mean image tokens per image (placeholders expanded)
    rates: dict[str, Series] = field(default_factory=dict)  # path -> images/s
    counts: dict[str, WorkCounts] = field(default_factory=dict)
    one_pass_rows: int = 0  # vision rows of one pass of every image (one prompt each, prompt by prompt)
    captions_equal: tuple[int, int] = (0, 0)  # (equal, all)


def photo_requests(count: int) -> list[ImageRequest]:
    """Random photo-sized RGB images, each with the 5 default prompts (`{label}` as "digit")."""
    rng = np.random.default_rng(0)
    prompts = tuple(prompt.render("digit") for prompt in load_prompt_set().prompts)
    return [
        ImageRequest(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), prompts)
        for w, h in (PHOTO_SIZES[k % len(PHOTO_SIZES)] for k in range(count))
    ]


def caption_all(engine: HFEngine, requests: list[ImageRequest]) -> list[list[str]]:
    captions = []
    for start in range(0, len(requests), SHARING_BATCH):
        captions += engine.caption(requests[start : start + SHARING_BATCH])
    return captions


def run_sharing(num_images: int, repeats: int, max_new_tokens: int) -> list[Sharing]:
    work = Path(tempfile.mkdtemp(prefix="vlmkd-bench-sharing-"))
    requests = photo_requests(num_images)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    results = []
    try:
        for kind in SHARING_MODELS:
            model = make_tiny_vlm(kind, work / kind)
            paths = {"prompt by prompt": False, "shared": True}
            engines = {path: load_engine("hf", model, settings, share_image_work=on) for path, on in paths.items()}
            reference = engines["prompt by prompt"]
            text = reference.model_text(requests[0].prompts[0])
            tokens = [reference.image_tokens(r.image.size, text) for r in requests]
            result = Sharing(kind, sum(tokens) / len(tokens))
            with counting_work(reference.model) as once:
                caption_all(reference, [ImageRequest(r.image, r.prompts[:1]) for r in requests])
            result.one_pass_rows = once.vision_rows
            captions = {}
            for path, engine in engines.items():  # untimed: the work counted, the captions compared
                with counting_work(engine.model) as counts:
                    captions[path] = caption_all(engine, requests)
                result.counts[path] = counts
            pairs = [(a, b) for x, y in zip(*captions.values(), strict=True) for a, b in zip(x, y, strict=True)]
            result.captions_equal = (sum(a == b for a, b in pairs), len(pairs))
            rows = {path: timer(partial(caption_all, engine, requests)) for path, engine in engines.items()}
            measured = interleave(rows, rounds=repeats)
            result.rates = {path: rate_series(num_images / s for s in seconds) for path, seconds in measured.items()}
            results.append(result)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sharing_table(results: list[Sharing], num_images: int) -> str:
    header = [
        "model",
        "image tokens per image",
        "path",
        "images/s best",
        "images/s median",
        "speed-up (median)",
        "vision passes per image",
        "prefill tokens per image",
        "decode tokens per image",
        "captions equal",
    ]
    rows = []
    for r in results:
        base = r.rates["prompt by prompt"].median
        for path, rates in r.rates.items():
            counts = r.counts[path]
            rows.append(
                [
                    f"tiny {r.model}",
                    f"{r.image_tokens:,.0f}",
                    path,
                    f"{rates.best:.2f}",
                    f"{rates.median:.2f}",
                    f"{rates.median / base:.2f}x",
                    f"{counts.vision_rows / r.one_pass_rows:.2f}",
                    f"{counts.prefill_tokens / num_images:,.0f}",
                    f"{counts.decode_tokens / num_images:,.0f}",
                    f"{r.captions_equal[0]}/{r.captions_equal[1]}",
                ]
            )
    return markdown_table(header, rows, "lrlrrrrrrr")


def sharing_verdict(results: list[Sharing]) -> str:
    parts = []
    for r in results:
        speedup = r.rates["shared"].median / r.rates["prompt by prompt"].median
        prefill = r.counts["shared"].prefill_tokens / r.counts["prompt by prompt"].prefill_tokens
        passes = r.counts["shared"].vision_rows / r.one_pass_rows
        met = "met" if speedup >= TARGET_SHARED_SPEEDUP else "NOT met"
        target = f" (target >= {TARGET_SHARED_SPEEDUP:.0f}x: {met})"
        parts.append(
            f"tiny {r.model}: {speedup:.2f}x images/s{target if r.model == 'llava-next' else ''}, "
            f"{passes:.2f} vision passes per image (target 1), prefill tokens {prefill:.2f} of prompt by prompt's "
            f"(target ~1/5), captions equal {r.captions_equal[0]}/{r.captions_equal[1]}"
        )
    return "Shared vs prompt by prompt: " + "; ".join(parts) + "."


def sharing_report(num_images: int, repeats: int, max_new_tokens: int) -> str:
    results = run_sharing(num_images, repeats, max_new_tokens)
    return "\n".join(
        [
            "# Captioning each image once for all its prompts: `hf` engine, shared vs prompt by prompt",
            "",
            f"{num_images} random photo-sized images ({', '.join(f'{w}x{h}' for w, h in PHOTO_SIZES)}), the 5 default "
            f"prompts, batches of {SHARING_BATCH} images ({5 * SHARING_BATCH} captions), greedy, {max_new_tokens} new "
            f"tokens, torch {torch.get_num_threads()} thread(s); {repeats} interleaved repetitions after an untimed "
            f"pass that counts the work and compares the captions. {machine()}, load average {load_average()} at "
            "the end (the machine was shared with other jobs). Vision passes per image: vision-tower rows (tiles) "
            "embedded, over the rows of one pass of every image; prefill tokens: text-model positions computed in "
            "calls of more than one token per row, padding included.",
            "",
            sharing_table(results, num_images),
            "",
            sharing_verdict(results),
            "",
            "## LLaVA-NeXT-7B on one H100, per image (analytic, `python benchmarks/captioning_cost.py`)",
            "",
            cost_table(),
            "",
            "Reproduce: `python benchmarks/bench_captioning.py --part sharing --threads 1`.",
        ]
    )


def batching_report(images: int, repeats: int, max_new_tokens: int) -> str:
    results = run(images, repeats, (8, 16, 32), max_new_tokens)
    return "\n".join(
        [
            "# Captioning throughput: batched `hf` engine vs one image at a time",
            "",
            f"Tiny random-init BLIP (`build_tiny_blip`), {images} random 64 px PNGs, one prompt, greedy, "
            f"{max_new_tokens} new tokens; {repeats} interleaved repetitions after a warm-up. "
            f"{machine()}, load average {load_average()} at the end of the run.",
            "",
            table(results),
            "",
            verdict(results),
            "",
            "Reproduce: `python benchmarks/bench_captioning.py --part batching`.",
        ]
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--part", choices=("all", "batching", "sharing"), default="all")
    parser.add_argument("--images", type=int, default=96, help="images of the batching part")
    parser.add_argument("--sharing-images", type=int, default=12, help="images of the sharing part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    parts = {
        "batching": (RESULTS, lambda: batching_report(32 if args.quick else args.images, repeats, args.max_new_tokens)),
        "sharing": (SHARING_RESULTS, lambda: sharing_report(3 if args.quick else args.sharing_images, repeats,
                                                            args.max_new_tokens)),
    }  # fmt: skip
    for name, (path, build) in parts.items():
        if args.part not in ("all", name):
            continue
        report = build()
        print(report)
        if not args.quick:
            write_report(path, report)


if __name__ == "__main__":
    main()
