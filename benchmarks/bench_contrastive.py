"""Speed and peak memory of the VLM-KD contrastive loss: every backend against the plain-PyTorch reference.

Rows per shape (Dt = 384, B in 256..4096, Dv in 512/2048): the GEMMs alone (t W^T and v^ u^T forward, plus
dS u^, dS^T v^ and du^T t backward: the floor for any CPU implementation that keeps them on BLAS), the
reference eager and under torch.compile, the C++ backend, and Triton/CUDA where a GPU is present. Modes:
forward (graph built, no backward) and full (forward + backward). Timed repetitions are interleaved across
rows (shared machines are noisy); best-of-N and the median are reported. Peak memory of a full run comes
from the CUDA allocator on a GPU and from the profiler's record of PyTorch's CPU allocator on the CPU.

    python benchmarks/bench_contrastive.py              # writes benchmarks/results/contrastive.md (+ .json)
    python benchmarks/bench_contrastive.py --quick      # B=256, 512 and Dv=512 only, prints only
    pytest benchmarks/bench_contrastive.py --benchmark-enable   # the same rows under pytest-benchmark
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from _common import (
    CLOCKS,
    Series,
    benchmark_parser,
    interleave,
    load_average,
    machine,
    markdown_table,
    seconds_series,
    timer,
    write_report,
)
from torch.profiler import ProfilerActivity, profile

from vlmkd.errors import InputError
from vlmkd.ops import contrastive_ref, vlmkd_contrastive_loss
from vlmkd.ops.contrastive import resolve_backend

TEXT_DIM = 384
BATCHES = (256, 512, 1024, 4096)
IMAGE_DIMS = (512, 2048)
MODES = ("forward", "full")
GEMM, REF, COMPILED = "GEMMs only", "reference eager", "reference torch.compile"
FUSED = ("cpp", "triton", "cuda")


@dataclass(frozen=True)
class Case:
    """One shape on one device."""

    batch: int
    image_dim: int
    device: str
    text_dim: int = TEXT_DIM
    positives: str = "instance"


@dataclass(frozen=True)
class Result:
    case: Case
    row: str
    mode: str
    seconds: Series
    peak_bytes: int | None = None


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
    """float32 inputs; v, weight, bias and logit_scale require grad (t is frozen data); labels of B/4 classes."""
    generator = torch.Generator().manual_seed(case.batch + case.image_dim)
    inputs = dict(
        v=torch.randn(case.batch, case.image_dim, generator=generator),
        t=torch.randn(case.batch, case.text_dim, generator=generator),
        weight=torch.randn(case.image_dim, case.text_dim, generator=generator) / math.sqrt(case.text_dim),
        bias=torch.zeros(case.image_dim),
        logit_scale=torch.tensor(math.log(1 / 0.07)),
    )
    inputs = {name: x.to(case.device).requires_grad_(name != "t") for name, x in inputs.items()}
    labels = torch.randint(0, max(1, case.batch // 4), (case.batch,), generator=generator)
    return {**inputs, "labels": labels.to(case.device)}


def usable_rows(device: str) -> list[str]:
    """The rows that can run on `device` tensors here."""
    rows = [GEMM, REF, COMPILED]
    for name in FUSED:
        try:
            resolve_backend(device, name)
        except InputError:
            continue
        rows.append(name)
    return rows


def runner(row: str, inputs: dict[str, torch.Tensor], positives: str = "instance") -> Callable[[str], None]:
    """A function of the mode that runs `row` once on `inputs` (and waits for the GPU)."""
    v, t, weight = inputs["v"], inputs["t"], inputs["weight"]
    leaves = [inputs[name] for name in ("v", "weight", "bias", "logit_scale")]
    sync = torch.cuda.synchronize if v.is_cuda else (lambda: None)

    def gemms(mode: str) -> None:
        with torch.no_grad():
            u = torch.mm(t, weight.T)
            s = torch.mm(v, u.T)
            if mode == "full":
                torch.mm(s, u)
                grad_u = torch.mm(s.T, v)
                torch.mm(grad_u.T, t)
        sync()

    if row == GEMM:
        return gemms
    if row == COMPILED:
        torch._dynamo.reset()  # one compiled shape at a time: no recompile limit across many shapes
    if row in (REF, COMPILED):
        loss_fn = contrastive_ref if row == REF else torch.compile(contrastive_ref, fullgraph=True, dynamic=False)
    else:

        def loss_fn(**kwargs: torch.Tensor) -> torch.Tensor:
            return vlmkd_contrastive_loss(**kwargs, backend=row)

    def run(mode: str) -> None:
        loss = loss_fn(**inputs, positives=positives)
        if mode == "full":
            torch.autograd.grad(loss, leaves)
        sync()

    return run


def peak_bytes(run: Callable[[str], None], device: str) -> int:
    """Peak tensor memory one full run adds on top of what is live before it.

    CUDA: the caching allocator's peak. CPU: every allocation and free of PyTorch's CPU allocator, as the
    profiler records them (custom ops and compiled kernels included), replayed in order.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run("full")
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run("full")
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(
    cases: list[Case], seconds: float, clock: str = "wall", min_rounds: int = 3, max_rounds: int = 200
) -> list[Result]:
    """Interleaved rounds (every row and mode once per round) for `seconds` per case, within the round limits.

    clock="cpu" times the process's CPU time instead of wall time: with one thread it is the work done, and
    it does not count the time slices that other processes on a shared machine take.
    """
    results = []
    for case in cases:
        inputs = make_inputs(case)
        runs = {row: runner(row, inputs, case.positives) for row in usable_rows(case.device)}
        for run in runs.values():  # warm-up: compile, allocator, thread pools
            for mode in MODES:
                run(mode)
        rows = {(row, mode): timer(partial(run, mode), clock) for row, run in runs.items() for mode in MODES}
        times = interleave(rows, seconds=seconds, min_rounds=min_rounds, max_rounds=max_rounds)
        peaks = {row: peak_bytes(run, case.device) for row, run in runs.items()}
        results += [
            Result(case, row, mode, seconds_series(values), peaks[row] if mode == "full" else None)
            for (row, mode), values in times.items()
        ]
        print(f"timed {case}", file=sys.stderr, flush=True)
    return results


def table(results: list[Result]) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:,.2f}"

    header = ["B", "Dv", "positives", "device", "row", "fwd best (ms)", "fwd median", "full best (ms)", "full median",
              "full vs GEMMs", "full vs eager", "full vs compile", "peak extra (MiB)", "rounds"]  # fmt: skip
    rows = []
    by_key = {(r.case, r.row, r.mode): r for r in results}

    def paired(result: Result, base: str) -> float:
        """Median over rounds of this row's time over the base row's in the same round."""
        base_seconds = by_key[result.case, base, result.mode].seconds.values
        return statistics.median(a / b for a, b in zip(result.seconds.values, base_seconds, strict=True))

    for case in dict.fromkeys(r.case for r in results):
        for row in dict.fromkeys(r.row for r in results if r.case == case):
            fwd, full = by_key[case, row, "forward"], by_key[case, row, "full"]
            ratios = [paired(full, base) for base in (GEMM, REF, COMPILED)]
            cells = [case.batch, case.image_dim, case.positives, case.device, row]
            cells += [ms(fwd.seconds.best), ms(fwd.seconds.median), ms(full.seconds.best), ms(full.seconds.median)]
            cells += [f"{ratio:.2f}x" for ratio in ratios]
            cells += [f"{full.peak_bytes / 2**20:,.1f}", len(full.seconds)]
            rows.append(cells)
    return markdown_table(header, rows, align="rrlll" + "r" * 9)


def report(results: list[Result], seconds: float, clock: str) -> str:
    return "\n".join(
        [
            "# VLM-KD contrastive loss: speed and memory",
            "",
            f"float32, Dt = {TEXT_DIM}; class positives with B/4 random classes. {machine()}. "
            f"Load average at the end {load_average()}: the machine is shared, so absolute numbers move with its load; "
            "the ratios come from interleaved "
            f"rounds in one run (about {seconds:g} s per shape, at least 3 rounds). Clock: {clock} time.",
            "",
            "*GEMMs only*: the same shapes' matrix products alone (2 forward, 5 forward + backward), the floor for "
            "an implementation that keeps them on BLAS. *full*: forward + backward. Ratios (of full): "
            "median over rounds of the per-round ratio, so drifts of the machine's load between rounds cancel. "
            "*peak extra*: tensor memory one full run adds at its peak (CUDA allocator peak on a GPU, PyTorch's "
            "CPU allocator as recorded by the profiler on the CPU); "
            "one B x B float32 matrix is B^2 * 4 bytes (1 MiB at B = 512, 64 MiB at B = 4096).",
            "",
            table(results),
            "",
            f"Reproduce: `{' '.join(['python benchmarks/bench_contrastive.py', *sys.argv[1:]])}`.",
            "",
        ]
    )


def main() -> None:
    parser = benchmark_parser(__doc__, "B=256, 512 and Dv=512 only; print only")
    parser.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--image-dim", type=int, nargs="+", default=list(IMAGE_DIMS))
    parser.add_argument("--seconds", type=float, default=30.0, help="timing budget per shape (default: 30)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: process CPU time")
    parser.add_argument("--positives", choices=("instance", "class"), nargs="+", default=["instance"])
    parser.add_argument("--threads", type=int, help="intra-op threads for torch and vlmkd (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "contrastive.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # one OpenMP runtime (torch's libgomp) serves vlmkd._C too
    batches, dims = ((256, 512), (512,)) if args.quick else (args.batch, args.image_dim)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = [
        Case(b, d, device, positives=p) for device in devices for p in args.positives for d in dims for b in batches
    ]
    results = measure(cases, args.seconds, args.clock)
    text = report(results, args.seconds, args.clock)
    print(text)
    if not args.quick:
        write_report(
            args.out, text, [{**asdict(r), "best": r.seconds.best, "median": r.seconds.median} for r in results]
        )


# ---------------------------------------------------------------------------------------------------------
# pytest-benchmark: `pytest benchmarks/bench_contrastive.py --benchmark-enable [-k "cpp and 512"]`

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("row", [GEMM, REF, COMPILED, *FUSED])
@pytest.mark.parametrize("image_dim", IMAGE_DIMS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("device", _DEVICES)
def test_contrastive(benchmark, device: str, batch: int, image_dim: int, row: str, mode: str) -> None:
    case = Case(batch, image_dim, device)
    if row not in usable_rows(device):
        pytest.skip(f"{row} cannot run on {device} tensors here")
    run = runner(row, make_inputs(case))
    run(mode)  # warm-up (and compile)
    benchmark.extra_info["peak_extra_bytes"] = peak_bytes(run, device)
    benchmark.pedantic(run, args=(mode,), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
