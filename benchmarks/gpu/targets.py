"""The GPU targets of issue #28, each met / NOT met / not measured with its figure, from the GPU session's files.

Reads what `benchmarks/gpu/run.sh` wrote: the kernel benchmark (`contrastive_gpu.json`), the `requires_cuda`
test report (JUnit XML) and the training-step benchmark (`train_gpu.json`); a missing or unreadable file makes
its targets "not measured" (naming the file), never an error. Writes `targets.md` (and `targets.json`) with the
card, driver, torch, Triton and CUDA versions. Targets:

1. B=4096 fwd+bwd: Triton and CUDA each >= 2x faster than reference eager with <= 0.25x its peak memory
   (every precision and Dv measured; the worst case is the figure).
2. B=131072 fits on the card for at least one fused backend (eager does not): the largest-batch probe.
3. B=16384 bf16 fwd+bwd within 1.5x of the cuBLAS GEMM floor (each fused backend, every Dv).
4. every `requires_cuda` test green (none failed or errored; skips are listed with their reasons).
5. the VLM-KD term <= 5% of a ResNet-50 AMP training step (the fused backends; the term timed alone).

    python benchmarks/gpu/targets.py --contrastive OUT/contrastive_gpu.json --tests LOGS/cuda_tests.xml \
        --tests-exit LOGS/cuda_tests.exit --train LOGS/train_gpu.json --out OUT
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from _common import benchmark_parser, markdown_table, write_report  # noqa: E402

FUSED = ("triton", "cuda")
EAGER, GEMM = "reference eager", "GEMMs only"
SPEEDUP_B, SPEEDUP, MEMORY = 4096, 2.0, 0.25
FITS_B = 131072
FLOOR_B, FLOOR = 16384, 1.5
MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"


@dataclass(frozen=True)
class Verdict:
    target: str
    verdict: str  # MET, NOT_MET or NOT_MEASURED
    figure: str


def read_json(path: Path | None) -> tuple[Any, str]:
    """(the file's data or None, why not)."""
    if path is None:
        return None, "no file given"
    try:
        return json.loads(path.read_text()), ""
    except FileNotFoundError:
        return None, f"{path.name} missing (its step failed or did not run)"
    except (OSError, ValueError) as error:
        return None, f"{path.name} unreadable: {error}"


def speed_and_memory(timings: list[dict]) -> list[Verdict]:
    """Target 1, per fused backend: the worst speed-up and memory ratio over eager at B=4096."""
    full = {
        (t["precision"], t["image_dim"], t["row"]): t
        for t in timings
        if t["batch"] == SPEEDUP_B and t["mode"] == "full"
    }
    target = f"B={SPEEDUP_B} fwd+bwd: {{}} >= {SPEEDUP:g}x faster than eager, <= {MEMORY:g}x its peak memory"
    verdicts = []
    for backend in FUSED:
        cases = []
        for (precision, dim, row), t in sorted(full.items()):
            eager = full.get((precision, dim, EAGER))
            if row != backend or eager is None:
                continue
            memory = t["peak_mib"] / eager["peak_mib"] if eager["peak_mib"] else float("nan")
            cases.append((eager["median_ms"] / t["median_ms"], memory, f"{precision} Dv={dim}"))
        if not cases:
            verdicts.append(Verdict(target.format(backend), NOT_MEASURED, f"no B={SPEEDUP_B} rows for {backend}"))
            continue
        slowest, heaviest = min(cases), max(cases, key=lambda c: c[1])
        met = slowest[0] >= SPEEDUP and heaviest[1] <= MEMORY
        figure = (
            f"slowest {slowest[0]:.2f}x ({slowest[2]}), heaviest {heaviest[1]:.3f}x memory ({heaviest[2]}); "
            + ", ".join(f"{where}: {speed:.2f}x / {memory:.3f}x" for speed, memory, where in cases)
        )
        verdicts.append(Verdict(target.format(backend), MET if met else NOT_MET, figure))
    return verdicts


def largest_batch(probes: list[dict]) -> Verdict:
    """Target 2: B=131072 fits for some fused backend; eager's largest batch stated beside it."""
    target = f"B={FITS_B} fits on the card for a fused backend (eager does not)"
    by_row = {p["row"]: p for p in probes}
    fused = {row: by_row[row] for row in FUSED if row in by_row}
    if not fused:
        return Verdict(target, NOT_MEASURED, "no probe rows (the probe did not run)")
    fits = [row for row, p in fused.items() if (p["largest_fitting"] or 0) >= FITS_B]
    figure = "; ".join(
        f"{row}: largest {p['largest_fitting']}, first out of memory {p['first_failing'] or 'none probed'}"
        for row, p in by_row.items()
    )
    eager = by_row.get(EAGER)
    if eager is not None and (eager["largest_fitting"] or 0) >= FITS_B:
        figure += f" (eager fits B={FITS_B} on this card too)"
    return Verdict(target, MET if fits else NOT_MET, figure)


def gemm_floor(timings: list[dict]) -> list[Verdict]:
    """Target 3, per fused backend: fwd+bwd over the GEMM floor at B=16384 in bf16, every Dv."""
    full = {
        (t["image_dim"], t["row"]): t
        for t in timings
        if t["batch"] == FLOOR_B and t["mode"] == "full" and t["precision"] == "bf16"
    }
    target = f"B={FLOOR_B} bf16 fwd+bwd: {{}} within {FLOOR:g}x of the cuBLAS GEMM floor"
    verdicts = []
    for backend in FUSED:
        ratios = [
            (t["median_ms"] / full[(dim, GEMM)]["median_ms"], dim)
            for (dim, row), t in sorted(full.items())
            if row == backend and (dim, GEMM) in full
        ]
        if not ratios:
            verdicts.append(Verdict(target.format(backend), NOT_MEASURED, f"no B={FLOOR_B} bf16 rows for {backend}"))
            continue
        worst = max(ratios)
        figure = ", ".join(f"Dv={dim}: {ratio:.2f}x" for ratio, dim in ratios)
        verdicts.append(Verdict(target.format(backend), MET if worst[0] <= FLOOR else NOT_MET, figure))
    return verdicts


def cuda_tests(path: Path | None, exit_file: Path | None = None) -> Verdict:
    """Target 4 from pytest's JUnit XML: counts, and the failures and skips by name (a module that fails to
    import is a test case with an error there). `exit_file` holds pytest's exit status as run.sh recorded it:
    stopped at the step's time limit (124), pytest still writes the report of the tests that ran, which alone
    would look green."""
    target = "every requires_cuda test green"
    if path is None or not path.is_file():
        return Verdict(
            target, NOT_MEASURED, f"{path.name if path else 'the test report'} missing (the step did not run)"
        )
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return Verdict(target, NOT_MEASURED, f"{path.name} unreadable: {error}")
    failed: list[str] = []
    skipped: list[tuple[str, str]] = []
    passed = 0
    for case in root.iter("testcase"):
        if case.get("name") is None:  # the entry an interrupted run leaves for the test it was in
            continue
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif (skip := case.find("skipped")) is not None:
            skipped.append((name, skip.get("message", "").strip()))
        else:
            passed += 1
    figure = f"{passed} passed, {len(failed)} failed or errored, {len(skipped)} skipped"
    if failed:
        figure += "; failed: " + ", ".join(failed)
    reasons: dict[str, list[str]] = {}
    for name, reason in skipped:
        reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():  # names only where few: a GPU-less run skips them all for one reason
        figure += f"; skipped ({reason}): " + (", ".join(names) if len(names) <= 5 else f"{len(names)} tests")
    green = passed > 0 and not failed
    status = read_exit(exit_file)
    if status not in (None, 0) and not (status == 1 and failed):  # 1 is pytest's "some tests failed"
        stopped = " (stopped at the step's time limit: the tests after it did not run)" if status == 124 else ""
        figure = f"pytest exit {status}{stopped}; {figure}"
        green = False
    return Verdict(target, MET if green else NOT_MET, figure)


def read_exit(path: Path | None) -> int | None:
    """The exit status a file holds, or None where there is no such file (or it holds no number)."""
    try:
        return int(path.read_text().strip()) if path is not None else None
    except (OSError, ValueError):
        return None


def train_share(data: Any, why: str) -> Verdict:
    """Target 5 from bench_train_gpu.py's JSON."""
    target = "VLM-KD term <= 5% of a ResNet-50 AMP training step"
    if data is None:
        return Verdict(target, NOT_MEASURED, why)
    record, setup = data.get("target", {}), data.get("setup", {})
    if record.get("met") is None:
        return Verdict(target, NOT_MEASURED, "no fused backend row ran")
    rows = {r["name"]: r for r in data.get("rows", [])}
    batch = setup.get("batch", 0)
    rates = ", ".join(f"{name} {batch * 1000 / r['step_ms']:,.0f} images/s" for name, r in rows.items())
    figure = (
        f"{record['worst_backend']}: {100 * record['share_term_alone']:.2f}% (term alone), "
        f"{100 * record['share_step_difference']:+.1f}% (step difference); {setup.get('arch')} "
        f"{setup.get('image_size')} px, batch {batch}, --amp {setup.get('amp')}; {rates}"
    )
    return Verdict(target, MET if record["met"] else NOT_MET, figure)


def environment() -> str:
    """Card, driver, torch, Triton, CUDA and vlmkd versions, as one line."""
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()[0]  # fmt: skip
    except (OSError, subprocess.SubprocessError, IndexError):
        smi = "driver unknown (nvidia-smi failed)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        from vlmkd.version import __version__ as vlmkd_version
    except ImportError:
        vlmkd_version = "not importable"
    return (
        f"{card}; driver, memory: {smi}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"Triton {triton_version}; vlmkd {vlmkd_version}"
    )


def judge(
    contrastive: Path | None, tests: Path | None, train: Path | None, tests_exit: Path | None = None
) -> list[Verdict]:
    data, why = read_json(contrastive)
    timings, probes = (data.get("timings", []), data.get("probes", [])) if data is not None else ([], [])
    kernel = [*speed_and_memory(timings), largest_batch(probes), *gemm_floor(timings)]
    if data is None:  # say why the kernel targets have no figures
        kernel = [Verdict(v.target, NOT_MEASURED, why) for v in kernel]
    return [*kernel, cuda_tests(tests, tests_exit), train_share(*read_json(train))]


def report(verdicts: list[Verdict], env: str) -> str:
    rows = [[v.target, f"**{v.verdict}**" if v.verdict != MET else v.verdict, v.figure] for v in verdicts]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in (MET, NOT_MET, NOT_MEASURED)}
    return "\n".join(
        [
            "# GPU targets (issue #28 item 2)",
            "",
            env + ".",
            "",
            markdown_table(["target", "verdict", "figure"], rows, "lll"),
            "",
            f"{counts[MET]} met, {counts[NOT_MET]} not met, {counts[NOT_MEASURED]} not measured.",
            "",
        ]
    )


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--contrastive", type=Path, help="contrastive_gpu.json of bench_contrastive_gpu.py")
    parser.add_argument("--tests", type=Path, help="JUnit XML of the requires_cuda tests")
    parser.add_argument("--tests-exit", type=Path, help="a file holding the test step's exit status (run.sh's)")
    parser.add_argument("--train", type=Path, help="train_gpu.json of bench_train_gpu.py")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for targets.md and .json")
    args = parser.parse_args()
    verdicts = judge(args.contrastive, args.tests, args.train, args.tests_exit)
    env = environment()
    text = report(verdicts, env)
    print(text)
    write_report(args.out / "targets.md", text, {"environment": env, "targets": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
