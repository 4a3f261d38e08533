"""Tiny BLIP vs tiny LLaVA through the hf engine, at 1 torch thread and at torch's default (one per core).

Why: captioning 988 images with the tiny LLaVA once took 1,035 s (1.0 img/s) on a shared 2-core machine,
against 43 img/s for the tiny BLIP in the demo. This times both models on the same requests (32 demo digits x
the 5 default prompts, batches of 3 images, 32 new tokens, greedy) under both thread counts, in interleaved rounds, and
reports wall and CPU seconds: CPU time shows the cost of OpenMP threads spinning on busy cores.

    python benchmarks/bench_caption_models.py [--rounds 3] [--out benchmarks/results/caption_models.md]
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from _common import benchmark_parser, interleave, load_average, machine, markdown_table, seconds_series, write_report

from vlmkd.caption.engines import GenerationSettings, ImageRequest, load_engine
from vlmkd.caption.prompts import load_prompt_set
from vlmkd.data import load_rgb
from vlmkd.data.demo import make_demo_dataset
from vlmkd.testing.tiny_models import make_tiny_vlm
from vlmkd.threads import torch_threads

IMAGES = 32
BATCH = 3  # images (15 captions)
TOKENS = 32


def main() -> None:
    parser = benchmark_parser(__doc__, quick=None)
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
        for engine in engines.values():
            engine.caption(requests[:BATCH])  # warm-up

        def caption_all(kind: str, threads: int) -> tuple[float, float]:
            """(wall, CPU) seconds to caption every request with `kind` on `threads` torch threads."""
            with torch_threads(threads):
                started, cpu_started = time.perf_counter(), time.process_time()
                for start in range(0, len(requests), BATCH):
                    engines[kind].caption(requests[start : start + BATCH])
                return time.perf_counter() - started, time.process_time() - cpu_started

        cases = [(kind, threads) for kind in engines for threads in (1, default_threads)]
        measured = interleave({case: partial(caption_all, *case) for case in cases}, rounds=args.rounds)
    rows = {case: (seconds_series(w for w, _ in r), seconds_series(c for _, c in r)) for case, r in measured.items()}
    lines = [
        "# Tiny BLIP vs tiny LLaVA captioning, 1 thread vs torch's default",
        "",
        f"Machine: {machine()}; load average at the end {load_average()}.",
        f"{IMAGES} images x {len(prompts)} prompts, batches of {BATCH} images, {TOKENS} new tokens, greedy; best of "
        f"{args.rounds} interleaved rounds (median in brackets).",
        "",
    ]
    header = ["model", "torch threads", "wall s", "images/s", "CPU s", "images per CPU-second"]
    cells = [
        [kind, threads, f"{wall.best:.2f} ({wall.median:.2f})", f"{IMAGES / wall.best:.1f}",
         f"{cpu.best:.2f} ({cpu.median:.2f})", f"{IMAGES / cpu.best:.1f}"]
        for (kind, threads), (wall, cpu) in rows.items()
    ]  # fmt: skip
    report = "\n".join([*lines, markdown_table(header, cells, "l" * 6)]) + "\n"
    print(report)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
