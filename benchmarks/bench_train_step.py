"""Training-step throughput (images/s), two parts:

- vlmkd: ResNet-32 with VLM-KD off, on with the reference loss, and on with the fused loss; target: the
  VLM-KD term costs <= 5% of a step (fused vs off).
- speed: the speed settings of a training step, eager vs channels-last vs torch.compile of the backbone
  (inductor), for ResNet-32 and one timm model (`--timm-model`, default timm:resnet10t).

One step = forward of the classifier, the objective (Balanced Softmax, + lambda * VLM-KD in the vlmkd part),
backward and an SGD step, on synthetic 32 px images and 384-d text features (all-MiniLM-L6-v2's width),
batch 128: the CIFAR-LT recipe. The loader is left out so the tables isolate the step's compute. Timed
repetitions are interleaved across rows (shared machines are noisy); best-of-N and median reported. The
compiled rows compile during warm-up; the time of that first step is reported separately.

    python benchmarks/bench_train_step.py                 # both parts -> benchmarks/results/train_step.md
    python benchmarks/bench_train_step.py --part speed    # one part (the file keeps the other part's section)
    python benchmarks/bench_train_step.py --quick         # small smoke run, prints only
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import Series, benchmark_parser, interleave, load_average, machine, markdown_table, seconds_series

from vlmkd.backends import backends
from vlmkd.losses import TaskLoss, VlmkdContrastiveLoss, VlmkdObjective
from vlmkd.models import ModelSpec, build_model
from vlmkd.models.speed import apply_speed_settings, batch_layout
from vlmkd.train.schedule import build_optimizer
from vlmkd.train.trainer import TrainStep

RESULTS = Path(__file__).parent / "results" / "train_step.md"
TARGET_OVERHEAD = 0.05
TEXT_DIM, NUM_CLASSES = 384, 100


@dataclass(frozen=True)
class Case:
    """One row: a backbone, the VLM-KD term off (backend None) or on with a loss backend, and speed settings."""

    name: str
    backend: str | None
    arch: str = "resnet32"
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class Setup:
    batch: int
    image_size: int
    width: float
    threads: int


@dataclass
class Result:
    case: Case
    seconds: Series = field(default_factory=seconds_series)  # wall time per step, one per timed repetition
    # process CPU time per step: less sensitive to other processes on a shared machine
    cpu_seconds: Series = field(default_factory=seconds_series)
    first_step: float = 0.0  # wall seconds of the first warm-up step (includes compilation)


class Stepper:
    """A model, objective and optimizer for one case; `step()` runs one training step on fixed data."""

    def __init__(self, case: Case, setup: Setup) -> None:
        torch.manual_seed(0)
        counts = torch.logspace(3, 1, NUM_CLASSES).round()
        width = setup.width if case.arch == "resnet32" else 1.0
        model = build_model(ModelSpec(case.arch, NUM_CLASSES, width))
        apply_speed_settings(model, channels_last=case.channels_last, compile=case.compile)
        contrastive = None
        if case.backend is not None:
            contrastive = VlmkdContrastiveLoss(TEXT_DIM, model.feature_dim, backend=case.backend)
        objective = VlmkdObjective(
            TaskLoss("balanced_softmax", counts), contrastive, vlmkd_weight=1.0 if contrastive else 0.0
        )
        self.module = TrainStep(model, objective).train()
        self.optimizer = build_optimizer([model, objective], "sgd", lr=0.01, weight_decay=5e-4)
        self.images = batch_layout(torch.randn(setup.batch, 3, setup.image_size, setup.image_size), case.channels_last)
        self.labels = torch.randint(NUM_CLASSES, (setup.batch,))
        self.text = torch.nn.functional.normalize(torch.randn(setup.batch, TEXT_DIM), dim=1) if contrastive else None

    def step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one training step."""
        started, cpu_started = time.perf_counter(), time.process_time()
        parts = self.module(self.images, self.labels, text=self.text)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        return time.perf_counter() - started, time.process_time() - cpu_started


def usable_backends() -> list[str]:
    status = backends()
    return [name for name in ("cpp", "triton", "cuda") if name in status and status[name].usable]


def mean_step(stepper: Stepper, steps: int) -> Callable[[], tuple[float, float]]:
    """A row: (wall, CPU) seconds per step, averaged over `steps` steps."""

    def one_round() -> tuple[float, float]:
        walls, cpus = zip(*(stepper.step() for _ in range(steps)), strict=True)
        return sum(walls) / steps, sum(cpus) / steps

    return one_round


def run(cases: list[Case], setup: Setup, repeats: int, steps: int, warmup: int) -> list[Result]:
    torch.set_num_threads(setup.threads)
    steppers = {case: Stepper(case, setup) for case in cases}
    first_step = {}
    for case, stepper in steppers.items():
        first_step[case] = stepper.step()[0]
        for _ in range(warmup - 1):
            stepper.step()
    measured = interleave({case: mean_step(stepper, steps) for case, stepper in steppers.items()}, rounds=repeats)
    return [
        Result(case, seconds_series(w for w, _ in rounds), seconds_series(c for _, c in rounds), first_step[case])
        for case, rounds in measured.items()
    ]


def table(results: list[Result], setup: Setup) -> str:
    off = next(r for r in results if r.case.backend is None)
    header = [
        "row",
        "images/s (best)",
        "images/s (median)",
        "wall ms/step (median)",
        "CPU ms/step (median)",
        "VLM-KD cost vs off: wall",
        "VLM-KD cost vs off: CPU",
    ]
    rows = []
    for result in results:
        wall, cpu = result.seconds.median, result.cpu_seconds.median
        costs = ["-", "-"]
        if result is not off:
            costs = [f"{100 * (wall / off.seconds.median - 1):+.1f}%"]
            costs += [f"{100 * (cpu / off.cpu_seconds.median - 1):+.1f}%"]
        rows.append(
            [
                result.case.name,
                f"{setup.batch / result.seconds.best:.0f}",
                f"{setup.batch / wall:.0f}",
                f"{1000 * wall:.1f}",
                f"{1000 * cpu:.1f}",
                *costs,
            ]
        )
    return markdown_table(header, rows, "l" * len(header))


def speed_table(results: list[Result], setup: Setup) -> str:
    """Per backbone: images/s of each speed setting and its speed-up over eager (median wall and CPU time)."""
    header = [
        "backbone",
        "setting",
        "images/s (best)",
        "images/s (median)",
        "wall ms/step (median)",
        "CPU ms/step (median)",
        "speed-up vs eager: wall",
        "speed-up vs eager: CPU",
        "first step (s)",
    ]
    rows = []
    for result in results:
        eager = next(r for r in results if r.case.arch == result.case.arch and r.case.name == "eager")
        wall, cpu = result.seconds.median, result.cpu_seconds.median
        rows.append(
            [
                result.case.arch,
                result.case.name,
                f"{setup.batch / result.seconds.best:.0f}",
                f"{setup.batch / wall:.0f}",
                f"{1000 * wall:.1f}",
                f"{1000 * cpu:.1f}",
                f"{eager.seconds.median / wall:.2f}x",
                f"{eager.cpu_seconds.median / cpu:.2f}x",
                f"{result.first_step:.1f}",
            ]
        )
    return markdown_table(header, rows, "l" * len(header))


def speed_summary(results: list[Result]) -> str:
    """Per backbone, one sentence: each setting's speed-up (median CPU time) and when compiling pays back (wall)."""
    sentences = []
    for arch in dict.fromkeys(r.case.arch for r in results):
        rows = {r.case.name: r for r in results if r.case.arch == arch}
        eager = rows.pop("eager")
        ups = ", ".join(f"{name} {eager.cpu_seconds.median / r.cpu_seconds.median:.2f}x" for name, r in rows.items())
        text = f"{arch}: {ups} (median CPU time per step)"
        compiled = next((r for r in rows.values() if r.case.compile), None)
        if compiled is not None:
            saved = eager.seconds.median - compiled.seconds.median
            payback = f"repaid after ~{compiled.first_step / saved:.0f} steps" if saved > 0 else "not repaid"
            text += f"; compiling took {compiled.first_step:.0f} s, {payback} at the median wall time"
        sentences.append(text + ".")
    return " ".join(sentences)


def run_part(
    cases: list[Case], setup: Setup, repeats: int, steps: int, warmup: int, render: Callable[[list[Result], Setup], str]
) -> tuple[list[Result], str, str]:
    """Time a part's cases; (results, the load average at the start, their table, printed)."""
    started = load_average()
    results = run(cases, setup, repeats=repeats, steps=steps, warmup=warmup)
    body = render(results, setup)
    print(body)
    return results, started, body


def vlmkd_part(setup: Setup, repeats: int, steps: int, quick: bool) -> str:
    cases = [Case("VLM-KD off (task loss only)", None), Case("VLM-KD on, reference loss", "reference")]
    cases += [Case(f"VLM-KD on, fused loss ({name})", name) for name in usable_backends()]
    results, started, body = run_part(cases, setup, repeats, steps, warmup=2, render=table)
    if quick:
        return body
    fused = [r for r in results if r.case.backend not in (None, "reference")]
    off = next(r for r in results if r.case.backend is None)
    verdict = ""
    if fused:
        cpu_cost = fused[0].cpu_seconds.median / off.cpu_seconds.median - 1.0
        wall_cost = fused[0].seconds.median / off.seconds.median - 1.0
        met = "met" if cpu_cost <= TARGET_OVERHEAD else "NOT met"
        verdict = (
            f"Target (fused VLM-KD term <= {100 * TARGET_OVERHEAD:.0f}% of a step, judged by median CPU time per "
            f"step, which other processes disturb least): **{met}** ({100 * cpu_cost:+.1f}% CPU, "
            f"{100 * wall_cost:+.1f}% wall; {fused[0].case.name}). On a busy machine the wall-time columns move by "
            "10% or more between runs (compare best and median images/s): read them as noise bounds."
        )
    header = [
        "## Cost of the VLM-KD term",
        "",
        f"ResNet-32 (width {setup.width}, {setup.image_size} px), {NUM_CLASSES} classes, batch {setup.batch}, "
        f"text dim {TEXT_DIM}, Balanced Softmax + VLM-KD (lambda 1), SGD; forward + backward + step on fixed "
        f"synthetic data. {machine()}; load average {started} at the start; {len(results[0].seconds)} "
        f"interleaved repetitions of {steps} steps.",
        "",
    ]
    return "\n".join([*header, body, "", verdict, ""])


def speed_part(setup: Setup, repeats: int, steps: int, timm_model: str, quick: bool) -> str:
    cases = []
    for arch in ("resnet32", timm_model):
        cases += [Case("eager", None, arch), Case("channels-last", None, arch, channels_last=True)]
        cases += [Case("torch.compile (inductor)", None, arch, compile=True)]
    results, started, body = run_part(cases, setup, repeats, steps, warmup=3, render=speed_table)
    if quick:
        return body
    header = [
        "## Speed settings: eager vs channels-last vs torch.compile",
        "",
        f"`--channels-last` and `--compile` on one training step (Balanced Softmax, VLM-KD off, SGD; forward + "
        f"backward + step on fixed synthetic data), {setup.image_size} px, {NUM_CLASSES} classes, batch "
        f"{setup.batch}; ResNet-32 at width {setup.width} and {timm_model} (timm). {machine()}. The machine was "
        f"shared with other agents' jobs (load average {started} at the start, {load_average()} at the end), so "
        f"the run uses {setup.threads} thread(s) and times {len(results[0].seconds)} interleaved repetitions of "
        f"{steps} steps: compare the rows of one backbone, not absolute numbers across runs. Speed-ups are median "
        'over median; "first step" is the first warm-up step, which for the compiled rows includes compilation.',
        "",
    ]
    return "\n".join([*header, body, "", speed_summary(results), ""])


def write_sections(sections: dict[str, str]) -> None:
    """Replace the given `## ` sections of the results file, keeping the others as they were."""
    kept: dict[str, str] = {}
    if RESULTS.is_file():
        for chunk in RESULTS.read_text().split("\n## ")[1:]:
            kept[chunk.split("\n", 1)[0]] = "## " + chunk.rstrip("\n") + "\n"
    for text in sections.values():
        kept[text.split("\n", 1)[0].removeprefix("## ")] = text
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(["# Training step", "", *kept.values()]))


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--part", choices=("all", "vlmkd", "speed"), default="all")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--timm-model", default="timm:resnet10t", help="the timm backbone of the speed part")
    args = parser.parse_args()
    setup = Setup(batch=16 if args.quick else args.batch, image_size=32, width=1.0, threads=args.threads)
    repeats, steps = (2, 1) if args.quick else (args.repeats, 3)
    sections = {}
    if args.part in ("all", "vlmkd"):
        sections["vlmkd"] = vlmkd_part(setup, repeats, steps, args.quick)
    if args.part in ("all", "speed"):
        sections["speed"] = speed_part(setup, repeats, steps, args.timm_model, args.quick)
    if not args.quick:
        write_sections(sections)


if __name__ == "__main__":
    main()
