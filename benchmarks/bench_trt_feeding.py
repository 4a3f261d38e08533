"""How well `--engine trt` feeds TensorRT-LLM, on the CPU with the strict stand-in (tests/stand_ins/tensorrt_llm).

Two ways to drive the same `LLM` over the same dataset, through the real runner and store:
- `today`: the engine before issue #23 (without the `trust_remote_code=` that TensorRT-LLM's loader rejects):
  per batch, `default_multimodal_input_loader` (which loads the processor, ~0.1 s for a LLaVA-NeXT-sized one)
  and a blocking `LLM.generate`, so at most one batch is in flight;
- `async`: vlmkd's engine: prompt texts worked out once, every caption submitted with `generate_async`, up to
  `submit_ahead` captions in flight.
The stand-in's executor plays the GPU: every step serves up to `max_batch_size` queued requests and takes
`--step-ms` (simulated GPU time): 8 per 200 ms by default, 40 captions/s, below what even a loaded 2-core host
submits, so that, as on a GPU captioning with a 7B model, the GPU is the bottleneck and idles whenever the
host keeps it waiting. Reported: captions/s, host CPU per caption (process CPU time;
the executor thread only sleeps and hashes), and requests in flight over time (time-weighted mean, max), with
a plot. Host CPU here includes the stand-in's preprocessing in `generate_async` (the tiny model's processor),
which the real TensorRT-LLM also runs on the caller's thread.

    python benchmarks/bench_trt_feeding.py [--images 200] [--step-ms 200] [--gpu-batch 8] [--rounds 2]
    python benchmarks/bench_trt_feeding.py --real [--model DIR]   # on a GPU, with TensorRT-LLM installed

With `--real` the installed TensorRT-LLM runs instead (`--model`: a LLaVA-NeXT checkpoint directory; default the
tiny random one, whose 16-wide attention heads TensorRT-LLM's kernels may refuse); requests in flight are then
not logged (n/a).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = ROOT / "tests" / "stand_ins"
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (  # noqa: E402
    benchmark_parser,
    interleave,
    load_average,
    machine,
    markdown_table,
    rate_series,
    seconds_series,
    write_image_dataset,
)

import vlmkd  # noqa: E402
from vlmkd.caption.engines import ENGINES  # noqa: E402
from vlmkd.caption.engines.base import Caption, GenerationSettings, ImageRequest, per_image, per_prompt  # noqa: E402
from vlmkd.caption.engines.trt import TRTEngine  # noqa: E402


class TodaysTRTEngine(TRTEngine):
    """The pre-#23 trt engine's calls: the input loader per batch, then a blocking `LLM.generate`."""

    submit_ahead = 0

    def submit(self, requests: Sequence[ImageRequest]) -> Future[list[list[Caption]]]:
        from tensorrt_llm.inputs import default_multimodal_input_loader

        pairs = per_prompt(requests)
        inputs = default_multimodal_input_loader(
            tokenizer=self.llm.tokenizer, model_dir=self.model_id, model_type=self.model_type, modality="image",
            prompts=[prompt for _, prompt in pairs], media=[[request.image] for request, _ in pairs],
            image_data_format="pt", device="cuda",
        )  # fmt: skip
        outputs = self.llm.generate(inputs, self.sampling_params, use_tqdm=False)
        future: Future[list[list[Caption]]] = Future()
        future.set_result(per_image([output.outputs[0].text.strip() for output in outputs], requests))
        return future


def in_flight_summary(stats: list[tuple[float, int]]) -> tuple[float, int]:
    """Time-weighted mean and max of requests in flight, from the stand-in's (time, count) log."""
    times = np.array([t for t, _ in stats])
    counts = np.array([c for _, c in stats])
    spans = np.diff(times)
    mean = float((counts[:-1] * spans).sum() / spans.sum()) if spans.sum() > 0 else 0.0
    return mean, int(counts.max())


def run(kind: str, dataset: Path, model: Path, out: Path, batch_size: int, llm_options: dict) -> dict:
    settings = GenerationSettings(max_new_tokens=16, dtype="auto")
    engine = (TodaysTRTEngine if kind == "today" else TRTEngine)(model, settings, llm_options=llm_options)
    cpu, wall = time.process_time(), time.perf_counter()
    report = vlmkd.caption(dataset=dataset, out=out, engine=engine, batch_size=batch_size, progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = list(getattr(engine.llm, "stats", []))  # the stand-in's log; the real LLM keeps none
    engine.close()
    mean, peak = in_flight_summary(stats) if len(stats) > 1 else (float("nan"), -1)
    return {"captions": report.captions, "wall": wall, "cpu": cpu, "mean_in_flight": mean, "max_in_flight": peak,
            "stats": stats}  # fmt: skip


def plot(traces: dict[str, list[tuple[float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    for kind, stats in traces.items():
        start = stats[0][0]
        axis.step([t - start for t, _ in stats], [c for _, c in stats], where="post", label=kind)
    axis.set(xlabel="seconds", ylabel="requests in flight", title="TensorRT-LLM stand-in: requests in flight")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--step-ms", type=float, default=200.0, help="simulated GPU time per executor step")
    parser.add_argument("--gpu-batch", type=int, default=8, help="requests the simulated GPU serves per step")
    parser.add_argument("--batch-size", type=int, default=16, help="captions per runner batch (vlmkd's default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "trt_in_flight.png")
    parser.add_argument("--real", action="store_true", help="the installed TensorRT-LLM (on a GPU), not the stand-in")
    parser.add_argument("--model", type=Path, default=None, help="with --real: a LLaVA-NeXT checkpoint directory")
    args = parser.parse_args()
    if not args.real:
        sys.path.insert(0, str(STAND_INS))
        os.environ["VLMKD_TRT_STANDIN_STEP_S"] = str(args.step_ms / 1000)
    assert ENGINES.get("trt") is TRTEngine
    from vlmkd.testing.tiny_models import build_tiny_llava_next

    work = Path(tempfile.mkdtemp(prefix="bench_trt_"))
    model = args.model or build_tiny_llava_next(work / "model")
    dataset = write_image_dataset(work / "data", args.images, classnames=[f"class{k}" for k in range(10)])
    options = {} if args.real else {"max_batch_size": args.gpu_batch}

    def caption_with(kind: str) -> Callable[[], dict]:
        stores = (work / f"store-{kind}-{n}" for n in itertools.count())
        return lambda: run(kind, dataset.source, model, next(stores), args.batch_size, options)

    measured = interleave({kind: caption_with(kind) for kind in ("today", "async")}, rounds=args.rounds)
    rows = {
        kind: {"rate": rate_series(r["captions"] / r["wall"] for r in results),
               "cpu": seconds_series(r["cpu"] / r["captions"] for r in results),
               "mean": [r["mean_in_flight"] for r in results], "max": [r["max_in_flight"] for r in results]}
        for kind, results in measured.items()
    }  # fmt: skip
    traces = {kind: results[-1]["stats"] for kind, results in measured.items()}
    if not args.real:
        plot(traces, args.plot)
    where = "TensorRT-LLM " + __import__("tensorrt_llm").__version__ if args.real else "strict stand-in"
    print(f"# trt engine feeding, {where}, {args.images} images x 5 prompts, batches of {args.batch_size} "
          f"captions, simulated GPU: {args.gpu_batch} requests per {args.step_ms:g} ms step\n")  # fmt: skip
    print(f"{machine()}; load average {load_average()}; {args.rounds} interleaved rounds\n")
    header = ["engine", "captions/s (median, best)", "host CPU ms per caption (median)",
              "in flight: mean / max (median)"]  # fmt: skip
    cells = [[kind, f"{row['rate'].median:.0f}, {row['rate'].best:.0f}", f"{1000 * row['cpu'].median:.2f}",
              f"{np.median(row['mean']):.0f} / {np.median(row['max']):.0f}"] for kind, row in rows.items()]  # fmt: skip
    print(markdown_table(header, cells, "llll"))
    ratio = rows["async"]["rate"].median / rows["today"]["rate"].median
    cpu = rows["today"]["cpu"].median / rows["async"]["cpu"].median
    print(f"\nasync vs today: {ratio:.1f}x captions/s, {cpu:.1f}x less host CPU per caption; plot: {args.plot}")


if __name__ == "__main__":
    main()
