"""Captioning on a GPU: the `hf` engine's shared-prefix path against prompt by prompt, tiny LLaVA-NeXT.

The tiny random LLaVA-NeXT of `vlmkd models make-tiny llava-next` (LLaVA-NeXT-7B's image-token counts, ~2,900
per photo-sized image) on the GPU in each `--dtypes` (default bfloat16, then float32), random photo-sized
images with the 5 default prompts, batches of `--batch-images` images, greedy: the engine captioning each image
once for all its prompts (one preprocessing, one vision pass, one prefill of the shared prefix) against the same
engine captioning prompt by prompt (the path before #24). Per dtype: an untimed pass of each path counts the
work (vision passes, prefill and decode tokens, by hooks: `vlmkd.testing.work_counters`) and compares the
captions; then interleaved timed rounds give images/s. Notices of the engine (a fallback to prompt by prompt)
are reported. Random weights make near-ties between logits common, so in bfloat16 a different batch shape can
flip a greedy token: captions equal is reported per dtype, expected exact in float32.

    python benchmarks/gpu/bench_caption_gpu.py --out DIR    # on a GPU: caption_gpu.{md,json}
    python benchmarks/gpu/bench_caption_gpu.py --dry-run    # anywhere: lists the cases
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness, the CPU benchmark
from _common import benchmark_parser, interleave, machine, markdown_table, timer, write_report  # noqa: E402
from bench_captioning import photo_requests  # noqa: E402

from vlmkd.caption import GenerationSettings, ImageRequest, load_engine  # noqa: E402
from vlmkd.caption.engines.hf import HFEngine  # noqa: E402
from vlmkd.testing import make_tiny_vlm  # noqa: E402
from vlmkd.testing.work_counters import WorkCounts, counting_work  # noqa: E402

PATHS = {"prompt by prompt": False, "shared": True}
BASE = "prompt by prompt"


@dataclass
class Case:
    """One dtype, both paths: images/s per timed round, the work counted once, the captions compared."""

    dtype: str
    rates: dict[str, list[float]] = field(default_factory=dict)  # path -> images/s per round
    counts: dict[str, WorkCounts] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    captions_equal: tuple[int, int] = (0, 0)  # (equal, all)
    notices: list[str] = field(default_factory=list)
    examples: list[tuple[str, str]] = field(default_factory=list)  # first differing (prompt by prompt, shared)


def caption_all(engine: HFEngine, requests: list[ImageRequest], batch: int) -> list[list[str]]:
    captions = []
    for start in range(0, len(requests), batch):
        captions += engine.caption(requests[start : start + batch])
    return captions


def run_case(model: Path, dtype: str, device: str, requests: list[ImageRequest], args) -> Case:
    case = Case(dtype)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, dtype=dtype)
    engines = {}
    for path, share in PATHS.items():
        started = time.perf_counter()
        engines[path] = load_engine("hf", model, settings, device=device, share_image_work=share)
        case.load_seconds[path] = time.perf_counter() - started
    captions = {}
    notices = io.StringIO()
    with contextlib.redirect_stderr(notices):
        for path, engine in engines.items():  # untimed: warm-up, the work counted, the captions compared
            with counting_work(engine.model) as counts:
                captions[path] = caption_all(engine, requests, args.batch_images)
            case.counts[path] = counts
    case.notices = sorted(set(filter(None, notices.getvalue().splitlines())))
    pairs = [(a, b) for x, y in zip(*captions.values(), strict=True) for a, b in zip(x, y, strict=True)]
    case.captions_equal = (sum(a == b for a, b in pairs), len(pairs))
    case.examples = [(a, b) for a, b in pairs if a != b][:3]
    rows = {path: timer(partial(caption_all, engine, requests, args.batch_images)) for path, engine in engines.items()}
    measured = interleave(rows, rounds=args.rounds, rotate=True)
    case.rates = {path: [len(requests) / s for s in seconds] for path, seconds in measured.items()}
    print(f"{dtype}: " + ", ".join(f"{p} {max(r):.1f} images/s" for p, r in case.rates.items()), flush=True)
    return case


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def table(cases: list[Case], images: int) -> str:
    rows = []
    for case in cases:
        base = median(case.rates[BASE])
        for path, rates in case.rates.items():
            counts = case.counts[path]
            rows.append(
                [case.dtype, path, f"{max(rates):.2f}", f"{median(rates):.2f}", f"{median(rates) / base:.2f}x",
                 f"{counts.vision_rows / images:.2f}", f"{counts.prefill_tokens / images:,.0f}",
                 f"{counts.decode_tokens / images:,.0f}", f"{case.captions_equal[0]}/{case.captions_equal[1]}"]
            )  # fmt: skip
    header = ["dtype", "path", "images/s best", "images/s median", "speed-up (median)", "vision rows per image",
              "prefill tokens per image", "decode tokens per image", "captions equal"]  # fmt: skip
    return markdown_table(header, rows, "llrrrrrrr")


def verdict(cases: list[Case]) -> str:
    lines = []
    for case in cases:
        speedup = median(case.rates["shared"]) / median(case.rates[BASE])
        prefill = case.counts["shared"].prefill_tokens / case.counts[BASE].prefill_tokens
        equal, total = case.captions_equal
        line = (
            f"- {case.dtype}: shared {speedup:.2f}x the images/s of prompt by prompt, prefill tokens "
            f"{prefill:.2f} of its; captions equal {equal}/{total}"
        )
        if case.examples:
            line += "; first differences: " + "; ".join(f"{a!r} vs {b!r}" for a, b in case.examples)
        if case.notices:
            line += "; engine notices: " + " | ".join(case.notices)
        lines.append(line + ".")
    return "\n".join(lines)


def report(cases: list[Case], args: argparse.Namespace) -> str:
    """caption_gpu.md: the setup, the table of the dtypes measured so far and the verdict."""
    return "\n".join(
        [
            "# Captioning on the GPU: shared prefix vs prompt by prompt (`hf` engine)",
            "",
            f"{'tiny random LLaVA-NeXT (make-tiny llava-next)' if args.model is None else args.model}, "
            f"{args.images} random photo-sized images x the 5 default prompts, batches of {args.batch_images} images, "
            f"greedy, {args.max_new_tokens} new tokens, on {args.device}; {args.rounds} interleaved timed rounds "
            f"per dtype after an untimed pass that counts the work and compares the captions. {machine()}.",
            "",
            table(cases, args.images),
            "",
            verdict(cases),
            "",
        ]
    )


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for caption_gpu.md and .json")
    parser.add_argument("--model", type=Path, help="a LLaVA-NeXT model folder (default: the tiny random one, built)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=("bfloat16", "float16",
                        "float32"), help="model dtypes, each timed on both paths")  # fmt: skip
    parser.add_argument("--images", type=int, default=48, help="photo-sized random images (5 prompts each)")
    parser.add_argument("--batch-images", type=int, default=8, help="images per engine call")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds per dtype")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script itself")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and exit (no GPU needed)")
    args = parser.parse_args()
    if args.dry_run:
        print(f"dtypes {', '.join(args.dtypes)} x paths {', '.join(PATHS)}; {args.images} images, 5 prompts each")
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_caption_gpu: no CUDA device", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vlmkd-caption-gpu-"))
    try:
        model = args.model or make_tiny_vlm("llava-next", work / "llava-next")
        requests = photo_requests(args.images)
        cases = []
        for dtype in args.dtypes:  # the report is rewritten after each dtype: a run stopped at its limit keeps it
            cases.append(run_case(model, dtype, args.device, requests, args))
            write_report(args.out / "caption_gpu.md", report(cases, args), {"cases": cases})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(cases, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
