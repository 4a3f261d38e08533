"""The VLM-KD contrastive loss on a GPU: time, peak memory and the largest batch for every backend.

Rows per shape (Dt = 384, B in 1024/4096/16384, Dv in 512/2048): the GEMMs alone in cuBLAS (the floor a fused
op cannot beat), the reference eager and under torch.compile, and the Triton and CUDA backends; forward and
forward + backward; bf16 autocast, float32 at matmul precision "high" (TF32) and "highest" (exact fp32), in that
order (the targets' precisions first). Times are medians of CUDA-event timed runs (a fixed budget per row after
a warm-up); peak memory is what one forward + backward adds to the allocator's peak. Before the timings, each of
eager / triton / cuda is probed upward from B = 16384 to 262144 (doubling, Dv = 512, TF32) until it runs out of
memory. The report is rewritten after the probe and after each shape, so a run stopped at its time limit keeps
what it measured (its title says "partial").

    python benchmarks/gpu/bench_contrastive_gpu.py --out $OUT        # on a GPU: writes contrastive_gpu.{md,json}
    python benchmarks/gpu/bench_contrastive_gpu.py --dry-run         # anywhere: lists the cases, times nothing
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the CPU benchmark's shared pieces
from _common import benchmark_parser, interleave, machine, markdown_table, write_report  # noqa: E402
from bench_contrastive import COMPILED, GEMM, MODES, REF, Case, make_inputs, peak_bytes, runner  # noqa: E402

from vlmkd.ops import contrastive_ref  # noqa: E402

BATCHES = (1024, 4096, 16384)
IMAGE_DIMS = (512, 2048)
PRECISIONS = ("bf16", "fp32-high", "fp32-highest")  # the targets' precisions first
ROWS = (GEMM, REF, COMPILED, "triton", "cuda")
PROBE_ROWS = (REF, "triton", "cuda")
PROBE_BATCHES = (16384, 32768, 65536, 131072, 262144)
TARGETS = (
    "B=4096 fwd+bwd: triton and cuda >= 2x faster than eager with <= 0.25x its peak memory",
    "B=131072 fits on one card for at least one fused backend (eager does not)",
    "B=16384 bf16 fwd+bwd within 1.5x of the GEMM floor",
)


@dataclass(frozen=True)
class Timing:
    batch: int
    image_dim: int
    precision: str
    row: str
    mode: str
    median_ms: float
    runs: int
    peak_mib: float | None


@dataclass(frozen=True)
class Probe:
    row: str
    largest_fitting: int | None
    first_failing: int | None
    ms_at_largest: float | None


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """float32 matmul precision ("highest": exact fp32, "high": TF32) or bf16 autocast, restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if name == "fp32-highest" else "high")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def compiled_runner(compiled: Callable, inputs: dict[str, torch.Tensor]) -> Callable[[str], None]:
    """Like bench_contrastive's COMPILED row, but with one dynamic-shape compilation shared by every shape."""
    leaves = [inputs[name] for name in ("v", "weight", "bias", "logit_scale")]

    def run(mode: str) -> None:
        loss = compiled(**inputs, positives="instance")
        if mode == "full":
            torch.autograd.grad(loss, leaves)
        torch.cuda.synchronize()

    return run


def cuda_event_ms(run: Callable[[str], None], mode: str) -> Callable[[], float]:
    """A row: the milliseconds one `run(mode)` takes on the GPU, between two CUDA events."""

    def timed() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(mode)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return timed


def median_ms(run: Callable[[str], None], mode: str, budget_s: float, min_runs: int = 5) -> tuple[float, int]:
    """Median CUDA-event time of `run(mode)` over as many runs as fit in `budget_s` (at least `min_runs`)."""
    run(mode)  # warm-up: compilation, autotuning, allocator
    times = interleave({mode: cuda_event_ms(run, mode)}, seconds=budget_s, min_rounds=min_runs, max_rounds=200)[mode]
    return statistics.median(times), len(times)


def measure(budget_s: float, measured: Callable[[list[Timing]], None] = lambda results: None) -> list[Timing]:
    """Every timed case; `measured(results so far)` after each shape (all rows and modes of one B, Dv, precision)."""
    results: list[Timing] = []
    for name in PRECISIONS:
        torch._dynamo.reset()
        compiled = torch.compile(contrastive_ref, fullgraph=True, dynamic=True)
        for image_dim in IMAGE_DIMS:
            for batch in BATCHES:
                inputs = make_inputs(Case(batch, image_dim, "cuda"))
                with precision(name):
                    for row in ROWS:
                        run = compiled_runner(compiled, inputs) if row == COMPILED else runner(row, inputs)
                        peak = peak_bytes(run, "cuda") / 2**20
                        for mode in MODES:
                            ms, runs = median_ms(run, mode, budget_s)
                            results.append(
                                Timing(batch, image_dim, name, row, mode, ms, runs, peak if mode == "full" else None)
                            )
                        print(f"{name} B={batch} Dv={image_dim} {row}: {ms:.3f} ms fwd+bwd", flush=True)
                del inputs
                gc.collect()
                torch.cuda.empty_cache()
                measured(results)
    return results


def probe(row: str) -> Probe:
    """The largest B (Dv 512, TF32, fwd+bwd) that runs for `row`, doubling until out of memory."""
    largest, failing, ms = None, None, None
    for batch in PROBE_BATCHES:
        try:
            inputs = make_inputs(Case(batch, 512, "cuda"))
            with precision("fp32-high"):
                run = runner(row, inputs)
                start = time.perf_counter()
                run("full")
                ms = 1e3 * (time.perf_counter() - start)
            largest = batch
        except torch.cuda.OutOfMemoryError:
            failing = batch
            break
        finally:
            inputs = None
            gc.collect()
            torch.cuda.empty_cache()
        print(f"probe {row}: B={batch} fits ({ms:.0f} ms)", flush=True)
    return Probe(row, largest, failing, ms if largest is not None else None)


def table(results: list[Timing]) -> str:
    by_key = {(r.batch, r.image_dim, r.precision, r.row, r.mode): r for r in results}
    rows = []
    for r in results:
        if r.mode != "full":
            continue
        key = (r.batch, r.image_dim, r.precision)
        fwd = by_key[(*key, r.row, "forward")]
        ratios = [r.median_ms / by_key[(*key, base, "full")].median_ms for base in (GEMM, REF, COMPILED)]
        eager_peak = by_key[(*key, REF, "full")].peak_mib or float("nan")
        cells = [r.precision, r.batch, r.image_dim, r.row, f"{fwd.median_ms:.3f}", f"{r.median_ms:.3f}"]
        cells += [f"{x:.2f}x" for x in ratios] + [f"{r.peak_mib:,.1f}", f"{r.peak_mib / eager_peak:.2f}x"]
        rows.append(cells)
    header = ["precision", "B", "Dv", "row", "fwd ms", "fwd+bwd ms", "vs GEMM floor", "vs eager", "vs compile",
              "peak MiB", "peak vs eager"]  # fmt: skip
    return markdown_table(header, rows, "lrrlrrrrrrr")


def probe_table(probes: list[Probe]) -> str:
    rows = []
    for p in probes:
        failing = p.first_failing if p.first_failing is not None else f"none up to {PROBE_BATCHES[-1]}"
        ms = f"{p.ms_at_largest:,.0f}" if p.ms_at_largest is not None else "-"
        rows.append([p.row, p.largest_fitting, failing, ms])
    header = ["row", "largest B that fits", "first B out of memory", "fwd+bwd ms at the largest"]
    return markdown_table(header, rows)


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for contrastive_gpu.md and .json")
    parser.add_argument("--budget", type=float, default=0.15, help="seconds of timed runs per row and mode")
    parser.add_argument("--no-probe", action="store_true", help="skip the largest-batch probe")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and exit (no GPU needed)")
    args = parser.parse_args()
    cases = [(p, d, b, row) for p in PRECISIONS for d in IMAGE_DIMS for b in BATCHES for row in ROWS]
    if args.dry_run:
        probed = ", ".join(PROBE_ROWS)
        print(f"{len(cases)} timed cases x {len(MODES)} modes; probe {probed} up to B={PROBE_BATCHES[-1]}")
        return 0
    if not torch.cuda.is_available():
        print("bench_contrastive_gpu: no CUDA device", file=sys.stderr)
        return 2
    shapes = len(PRECISIONS) * len(IMAGE_DIMS) * len(BATCHES)
    probes: list[Probe] = []

    def save(results: list[Timing], final: bool = False) -> None:
        """The report so far: a step stopped at its time limit keeps what it measured."""
        done = len(results) // (len(ROWS) * len(MODES))
        text = report(results, probes, args.budget, None if final else f"{done} of {shapes} shapes timed so far")
        if final:
            print(text)
        write_report(args.out / "contrastive_gpu.md", text, {"timings": results, "probes": probes})

    # The probe first: it is short, and a target (B=131072 fits) rests on it alone.
    for row in [] if args.no_probe else PROBE_ROWS:
        probes.append(probe(row))
        save([])
    # bf16 and TF32 first: the targets are judged on them.
    results = measure(args.budget, save)
    save(results, final=True)
    return 0


def report(results: list[Timing], probes: list[Probe], budget: float, partial: str | None) -> str:
    return "\n".join(
        [
            "# VLM-KD contrastive loss on the GPU" + (f" (partial: {partial})" if partial else ""),
            "",
            f"{machine()}; Triton {_triton_version()}. Dt = 384, instance positives, fp32 inputs (bf16: autocast). "
            f"Median of CUDA-event timed runs ({budget:g} s per row and mode after a warm-up). "
            "*GEMM floor*: the same matrix products alone in cuBLAS. *peak*: memory one forward + backward adds.",
            "",
            table(results),
            "",
            "Largest batch (Dv 512, TF32, forward + backward), probed by doubling:",
            "",
            probe_table(probes),
            "",
            "Targets: " + "; ".join(TARGETS) + ".",
            "",
        ]
    )


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
