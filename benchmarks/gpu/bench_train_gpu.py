"""Training-step throughput on a GPU: ResNet-50 at 224 px under AMP, and the VLM-KD term's share of the step.

Rows, each its own model, objective and SGD optimizer on one fixed synthetic batch (images, 1000 long-tailed
labels, 384-d text features: all-MiniLM-L6-v2's width): the VLM-KD term off (Balanced Softmax only), and on
(lambda 1, vlmkd-train's contrastive defaults) with the reference loss, the Triton backend and the CUDA
backend. One step = forward under autocast, the objective, backward (through a GradScaler under fp16) and
the optimizer step, as in `vlmkd-train` (the loader is left out: the step's compute alone). Timed with CUDA
events, `--steps` steps per round, rounds interleaved across rows (each round starts one row later);
medians reported. Peak memory: what one step adds to the allocator's peak over the memory held before it.

The term's share of the step is read two ways: (step with the term - step without) / step with the term, and,
steadier, the term alone (the objective's forward + backward on the batch's features, minus the same without
the term) over the step with the term. Target: <= 5% for the fused backends.

    python benchmarks/gpu/bench_train_gpu.py --amp bf16 --channels-last --out DIR   # on a GPU: train_gpu.{md,json}
    python benchmarks/gpu/bench_train_gpu.py --dry-run                              # anywhere: lists the rows
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from _common import benchmark_parser, interleave, machine, markdown_table, write_report  # noqa: E402

from vlmkd.losses import TaskLoss, VlmkdContrastiveLoss, VlmkdObjective  # noqa: E402
from vlmkd.models import ModelSpec, build_model  # noqa: E402
from vlmkd.models.speed import apply_speed_settings, batch_layout  # noqa: E402
from vlmkd.train.schedule import build_optimizer  # noqa: E402
from vlmkd.train.trainer import TrainStep  # noqa: E402

TEXT_DIM, NUM_CLASSES = 384, 1000
OFF = "off"
ROWS = (OFF, "reference", "triton", "cuda")
FUSED = ("triton", "cuda")
TARGET_SHARE = 0.05
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass(frozen=True)
class Setup:
    arch: str
    image_size: int
    batch: int
    amp: str
    channels_last: bool
    device: str


@dataclass
class Row:
    """One row's figures: median ms per step and per term-alone pass, images/s and the step's added peak."""

    name: str
    step_ms: float
    step_rounds: list[float]
    term_ms: float
    peak_mib: float | None  # None on the CPU
    held_mib: float | None


class Stepper:
    """A classifier, objective and optimizer for one row; `step()` runs one training step on the fixed batch."""

    def __init__(self, row: str, setup: Setup, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        torch.manual_seed(0)
        counts = torch.logspace(3, 1, NUM_CLASSES).round()
        model = build_model(ModelSpec(setup.arch, NUM_CLASSES)).to(setup.device)
        apply_speed_settings(model, channels_last=setup.channels_last)
        contrastive = None if row == OFF else VlmkdContrastiveLoss(TEXT_DIM, model.feature_dim, backend=row)
        objective = VlmkdObjective(TaskLoss("balanced_softmax", counts), contrastive, vlmkd_weight=0.0 if contrastive
                                   is None else 1.0).to(setup.device)  # fmt: skip
        self.module = TrainStep(model, objective).train()
        self.objective = objective
        self.optimizer = build_optimizer([model, objective], "sgd", lr=0.01, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler(torch.device(setup.device).type, enabled=setup.amp == "fp16")
        self.autocast = AMP_DTYPES[setup.amp]
        self.device_type = torch.device(setup.device).type
        images, self.labels, text = data
        self.images = batch_layout(images, setup.channels_last)
        self.text = text if contrastive is not None else None
        self.features = torch.randn(setup.batch, model.feature_dim, device=setup.device, requires_grad=True)
        self.logits = torch.randn(setup.batch, NUM_CLASSES, device=setup.device, requires_grad=True)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def step(self) -> None:
        with self._autocast():
            parts = self.module(self.images, self.labels, text=self.text)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def term(self) -> None:
        """The objective alone, forward + backward, on features and logits of the batch's shape."""
        with self._autocast():
            parts = self.objective(self.logits, self.features, self.labels, text=self.text)
        parts["loss"].backward()


def event_ms(run: Callable[[], None], count: int, device: str) -> Callable[[], float]:
    """A row: milliseconds per call of `run`, over `count` calls between two CUDA events (on the CPU: the wall
    clock, for trying the script itself)."""

    def timed() -> float:
        if torch.device(device).type != "cuda":
            started = time.perf_counter()
            for _ in range(count):
                run()
            return 1000 * (time.perf_counter() - started) / count
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / count

    return timed


def added_peak_mib(run: Callable[[], None], device: str) -> tuple[float | None, float | None]:
    """(MiB one call of `run` adds to the allocator's peak over what is held before it, MiB held before it);
    None on the CPU."""
    if torch.device(device).type != "cuda":
        return None, None
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - held) / 2**20, held / 2**20


def measure(setup: Setup, rows: list[str], steps: int, rounds: int, warmup: int) -> list[Row]:
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in a training run: cuDNN picks its fastest kernels
    generator = torch.Generator(device=setup.device).manual_seed(0)
    images = torch.randn(setup.batch, 3, setup.image_size, setup.image_size, device=setup.device, generator=generator)
    labels = torch.randint(NUM_CLASSES, (setup.batch,), device=setup.device, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(setup.batch, TEXT_DIM, device=setup.device, generator=generator))
    steppers = {row: Stepper(row, setup, (images, labels, text)) for row in rows}
    for row, stepper in steppers.items():
        for _ in range(warmup):  # cuDNN autotuning, Triton compilation, the allocator's pools
            stepper.step()
            stepper.term()
        print(f"{row}: warmed up", flush=True)
    peaks = {row: added_peak_mib(stepper.step, setup.device) for row, stepper in steppers.items()}
    step_rounds = interleave(
        {row: event_ms(s.step, steps, setup.device) for row, s in steppers.items()}, rounds=rounds, rotate=True
    )
    term_rounds = interleave(
        {row: event_ms(s.term, 4 * steps, setup.device) for row, s in steppers.items()}, rounds=rounds, rotate=True
    )
    return [
        Row(row, statistics.median(step_rounds[row]), step_rounds[row], statistics.median(term_rounds[row]),
            *peaks[row])
        for row in rows
    ]  # fmt: skip


def shares(results: list[Row]) -> dict[str, tuple[float, float]]:
    """Per row with the term: (share of the step by step difference, share by the term alone)."""
    off = next(r for r in results if r.name == OFF)
    return {
        r.name: ((r.step_ms - off.step_ms) / r.step_ms, (r.term_ms - off.term_ms) / r.step_ms)
        for r in results
        if r.name != OFF
    }


def table(results: list[Row], setup: Setup) -> str:
    share = shares(results)
    rows = []
    for r in results:
        spread = f"{min(r.step_rounds):.1f}-{max(r.step_rounds):.1f}"
        by_step, alone = share.get(r.name, (None, None))
        cells = [r.name, f"{setup.batch * 1000 / r.step_ms:,.0f}", f"{r.step_ms:.2f}", spread, f"{r.term_ms:.3f}"]
        cells += ["-" if by_step is None else f"{100 * by_step:+.1f}%", "-" if alone is None else f"{100 * alone:.2f}%"]
        cells += ["-" if x is None else f"{x:,.0f}" for x in (r.peak_mib, r.held_mib)]
        rows.append(cells)
    header = ["VLM-KD term", "images/s", "ms/step (median)", "ms/step (rounds)", "objective fwd+bwd ms",
              "term share: step difference", "term share: term alone", "step peak MiB", "held before MiB"]  # fmt: skip
    return markdown_table(header, rows, "lrrrrrrrr")


def verdict(results: list[Row]) -> tuple[str, dict]:
    """The target line and its record: the worst fused backend's share (term alone), met or not."""
    share = shares(results)
    fused = {name: share[name] for name in FUSED if name in share}
    if not fused:
        return "Target not judged: no fused backend row ran.", {"met": None}
    worst = max(fused, key=lambda name: fused[name][1])
    by_step, alone = fused[worst]
    met = alone <= TARGET_SHARE
    text = (
        f"Target (fused VLM-KD term <= {100 * TARGET_SHARE:.0f}% of the step): **{'met' if met else 'NOT met'}**; "
        + ", ".join(f"{n}: {100 * a:.2f}% alone, {100 * s:+.1f}% by step difference" for n, (s, a) in fused.items())
        + "."
    )
    return text, {"met": met, "worst_backend": worst, "share_term_alone": alone, "share_step_difference": by_step}


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for train_gpu.md and .json")
    parser.add_argument("--arch", default="resnet50", help="backbone (default resnet50: torchvision's)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and batches")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="the term off, or its backend")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script itself")
    parser.add_argument("--dry-run", action="store_true", help="list the rows and exit (no GPU needed)")
    args = parser.parse_args()
    setup = Setup(args.arch, args.image_size, args.batch, args.amp, args.channels_last, args.device)
    if args.dry_run:
        print(f"rows {', '.join(args.rows)}; {setup}; {args.rounds} rounds of {args.steps} steps")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA device", file=sys.stderr)
        return 2
    if OFF not in args.rows:
        args.rows.insert(0, OFF)
    results = measure(setup, args.rows, args.steps, args.rounds, args.warmup)
    line, record = verdict(results)
    text = "\n".join(
        [
            "# Training step on the GPU: the VLM-KD term's share",
            "",
            f"{setup.arch} at {setup.image_size} px, batch {setup.batch}, {NUM_CLASSES} classes, text dim {TEXT_DIM}, "
            f"--amp {setup.amp}{' --channels-last' if setup.channels_last else ''}, SGD; synthetic data on the GPU, "
            f"no loader; cuDNN benchmark mode. {machine()}. Medians of {args.rounds} interleaved rounds of "
            f"{args.steps} steps (CUDA events) after {args.warmup} warm-up steps per row; *step peak*: what one "
            "step adds to the allocator's peak.",
            "",
            table(results, setup),
            "",
            line,
            "",
        ]
    )
    print(text)
    write_report(args.out / "train_gpu.md", text, {"setup": setup, "rows": results, "target": record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
