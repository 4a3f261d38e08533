"""benchmarks/gpu/targets.py judges issue #28's GPU targets from the files the GPU session writes.

The inputs are written by the producers' own record types (bench_contrastive_gpu's Timing and Probe,
bench_train_gpu's Row and Setup, through the harness's write_report) and by pytest's own JUnit report, so a
change of either side's format shows here; the figures are worked out by hand from the numbers put in.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).parents[1] / "benchmarks" / "gpu"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


targets = load("targets")
contrastive = load("bench_contrastive_gpu")
train = load("bench_train_gpu")
write_report = sys.modules["_common"].write_report


def timing(batch: int, dim: int, precision: str, row: str, ms: float, peak: float | None) -> object:
    return contrastive.Timing(batch, dim, precision, row, "full", ms, 10, peak)


def contrastive_json(tmp_path: Path, *, triton_4096_ms: float, cuda_16384_ms: float, triton_fits: int) -> Path:
    eager, gemm = targets.EAGER, targets.GEMM
    timings = [
        timing(4096, 512, "fp32-high", eager, 10.0, 400.0),
        timing(4096, 512, "fp32-high", "triton", triton_4096_ms, 40.0),
        timing(4096, 512, "fp32-high", "cuda", 4.0, 100.0),  # 2.5x, but 0.25x memory exactly: met
        timing(4096, 512, "bf16", eager, 8.0, 200.0),
        timing(4096, 512, "bf16", "triton", 2.0, 20.0),
        timing(4096, 512, "bf16", "cuda", 2.0, 20.0),
        contrastive.Timing(4096, 512, "bf16", "cuda", "forward", 0.5, 10, None),  # forward rows are not judged
        timing(16384, 512, "bf16", gemm, 2.0, 10.0),
        timing(16384, 512, "bf16", "triton", 2.9, 10.0),
        timing(16384, 512, "bf16", "cuda", cuda_16384_ms, 10.0),
        timing(16384, 512, "fp32-high", "cuda", 99.0, 10.0),  # not bf16: not judged
    ]
    probes = [
        contrastive.Probe(eager, 65536, 131072, 900.0),
        contrastive.Probe("triton", triton_fits, None, 800.0),
        contrastive.Probe("cuda", 65536, 131072, 700.0),
    ]
    path = tmp_path / "contrastive_gpu.md"
    write_report(path, "#", {"timings": timings, "probes": probes})
    return path.with_suffix(".json")


def train_json(tmp_path: Path, term_ms: dict[str, float]) -> Path:
    setup = train.Setup("resnet50", 224, 256, "bf16", True, "cuda")
    rows = [train.Row(name, 100.0 + 10 * ms, [100.0], ms, 1000.0, 200.0) for name, ms in term_ms.items()]
    line, record = train.verdict(rows)
    path = tmp_path / "train_gpu.md"
    write_report(path, line, {"setup": setup, "rows": rows, "target": record})
    return path.with_suffix(".json")


def junit(tmp_path: Path, body: str) -> Path:
    """pytest's own JUnit XML for a test file with `body`."""
    (tmp_path / "test_sample.py").write_text("import pytest\n\n" + body)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "test_sample.py"],
        cwd=tmp_path, capture_output=True, timeout=120,
    )  # fmt: skip
    return report


def by_target(verdicts: list) -> dict[str, tuple[str, str]]:
    return {v.target: (v.verdict, v.figure) for v in verdicts}


def test_kernel_targets_are_judged_on_the_worst_case(tmp_path: Path) -> None:
    data = contrastive_json(tmp_path, triton_4096_ms=5.5, cuda_16384_ms=3.2, triton_fits=262144)
    verdicts = by_target(targets.judge(data, None, None))
    speed = [v for t, v in verdicts.items() if t.startswith("B=4096")]
    # triton: fp32-high 10/5.5 = 1.82x (< 2x), memory 40/400 = 0.1x; bf16 4x, 0.1x: the slowest case misses
    assert speed[0][0] == targets.NOT_MET and "slowest 1.82x (fp32-high Dv=512)" in speed[0][1]
    # cuda: 2.5x and 100/400 = 0.25x (fp32-high), 4x and 0.1x (bf16): met at the bound
    assert speed[1][0] == targets.MET and "heaviest 0.250x memory (fp32-high Dv=512)" in speed[1][1]
    fits = next(v for t, v in verdicts.items() if t.startswith("B=131072"))
    assert fits[0] == targets.MET and "triton: largest 262144, first out of memory none probed" in fits[1]
    floor = [v for t, v in verdicts.items() if t.startswith("B=16384")]
    assert floor[0] == (targets.MET, "Dv=512: 1.45x")  # 2.9 / 2.0
    assert floor[1] == (targets.NOT_MET, "Dv=512: 1.60x")  # 3.2 / 2.0


def test_a_fused_backend_that_does_not_reach_131072_misses(tmp_path: Path) -> None:
    data = contrastive_json(tmp_path, triton_4096_ms=2.0, cuda_16384_ms=2.0, triton_fits=65536)
    fits = next(v for v in targets.judge(data, None, None) if v.target.startswith("B=131072"))
    assert fits.verdict == targets.NOT_MET


@pytest.mark.parametrize(
    ("term_ms", "verdict", "figure"),
    [
        # term alone: (0.5 - 0.1) / (100 + 10 * 0.5) = 0.38%; worst fused backend named
        ({"off": 0.1, "reference": 3.0, "triton": 0.3, "cuda": 0.5}, targets.MET, "cuda: 0.38% (term alone)"),
        ({"off": 0.1, "triton": 11.1, "cuda": 0.5}, targets.NOT_MET, "triton: 5.21% (term alone)"),  # 11 / 211
        ({"off": 0.1, "reference": 0.5}, targets.NOT_MEASURED, "no fused backend row ran"),
    ],
)
def test_the_vlmkd_term_share_comes_from_the_training_benchmark(
    tmp_path: Path, term_ms: dict, verdict: str, figure: str
) -> None:
    result = targets.judge(None, None, train_json(tmp_path, term_ms))[-1]
    assert result.verdict == verdict
    assert figure in result.figure


def test_cuda_tests_green_needs_a_pass_and_no_failure(tmp_path: Path) -> None:
    passing = junit(
        tmp_path, "def test_a():\n    pass\n\n@pytest.mark.skip(reason='no DALI')\ndef test_b():\n    pass\n"
    )
    result = targets.judge(None, passing, None)[-2]
    assert (result.verdict, result.figure) == (
        targets.MET,
        "1 passed, 0 failed or errored, 1 skipped; skipped (no DALI): test_sample::test_b",
    )
    failing = junit(tmp_path, "def test_a():\n    assert False\n\ndef test_c():\n    pass\n")
    result = targets.judge(None, failing, None)[-2]
    assert result.verdict == targets.NOT_MET and "failed: test_sample::test_a" in result.figure
    broken = junit(tmp_path, "import no_such_module_here\n\ndef test_a():\n    pass\n")  # a collection error
    result = targets.judge(None, broken, None)[-2]
    assert (result.verdict, result.figure) == (
        targets.NOT_MET,
        "0 passed, 1 failed or errored, 0 skipped; failed: ::test_sample",
    )
    skipped = junit(
        tmp_path, "\n".join(f"@pytest.mark.skip(reason='gpu')\ndef test_{i}():\n    pass\n" for i in range(7))
    )
    result = targets.judge(None, skipped, None)[-2]
    assert (result.verdict, result.figure) == (
        targets.NOT_MET,
        "0 passed, 0 failed or errored, 7 skipped; skipped (gpu): 7 tests",
    )


def test_cuda_tests_stopped_at_the_time_limit_are_not_green(tmp_path: Path) -> None:
    """Interrupted as run.sh's `timeout -s INT` does, pytest still writes the report of the tests that ran: one
    passed, the interrupted one leaves a nameless entry; the exit status file says the step timed out."""
    (tmp_path / "test_sample.py").write_text(
        "import time\n\ndef test_a():\n    pass\n\ndef test_b():\n    time.sleep(60)\n"
    )
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "test_sample.py"]
    done = subprocess.run(["timeout", "-s", "INT", "-k", "10", "8", *command], cwd=tmp_path, capture_output=True)
    assert done.returncode == 124
    exit_file = tmp_path / "cuda_tests.exit"
    exit_file.write_text("124\n")
    alone = targets.judge(None, report, None)[-2]
    assert (alone.verdict, alone.figure) == (targets.MET, "1 passed, 0 failed or errored, 0 skipped")  # looks green
    result = targets.judge(None, report, None, exit_file)[-2]
    assert result.verdict == targets.NOT_MET
    assert result.figure == (
        "pytest exit 124 (stopped at the step's time limit: the tests after it did not run); "
        "1 passed, 0 failed or errored, 0 skipped"
    )
    exit_file.write_text("1\n")  # pytest's "tests failed" with every recorded test passed: not green either
    assert targets.judge(None, report, None, exit_file)[-2].figure.startswith("pytest exit 1; ")


def test_missing_files_are_not_measured_and_say_which(tmp_path: Path) -> None:
    verdicts = targets.judge(tmp_path / "contrastive_gpu.json", tmp_path / "cuda_tests.xml", tmp_path / "nope.json")
    assert [v.verdict for v in verdicts] == [targets.NOT_MEASURED] * 7
    assert verdicts[0].figure == "contrastive_gpu.json missing (its step failed or did not run)"
    assert verdicts[-1].figure == "nope.json missing (its step failed or did not run)"


def test_env_check_fails_only_on_what_the_gpu_steps_need(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[build-system]\nrequires = ["pybind11>=2.12"]\n[project]\n'
        'dependencies = ["torch<1", "aiohttp<1", "no-such-package-here>=1", "numpy>=1; python_version < \'3\'"]\n'
    )
    result = subprocess.run(
        [sys.executable, str(GPU / "env_check.py"), "--pyproject", str(pyproject)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "env_check: installed but out of vlmkd's range: torch " in result.stderr
    assert "aiohttp" not in result.stderr  # listed as out of range, but no GPU step uses it
    assert "aiohttp<1: " in result.stdout and "OUT OF RANGE" in result.stdout
    assert "no-such-package-here>=1: not installed" in result.stdout
    assert "numpy" not in result.stdout  # its marker excludes it
    assert "pybind11>=2.12: " in result.stdout


@pytest.mark.slow
def test_the_training_benchmark_runs_on_the_cpu(tmp_path: Path) -> None:
    """bench_train_gpu.py end to end on a tiny case (--device cpu: wall clock, no memory figures)."""
    args = ["--device", "cpu", "--arch", "resnet32", "--image-size", "32", "--batch", "4", "--amp", "none"]
    args += ["--rows", "reference", "--steps", "1", "--rounds", "2", "--warmup", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(GPU / "bench_train_gpu.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "train_gpu.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["off", "reference"]  # the row without the term is always added
    assert all(r["step_ms"] > 0 and r["term_ms"] > 0 and len(r["step_rounds"]) == 2 for r in data["rows"])
    assert all(r["peak_mib"] is None for r in data["rows"])
    assert data["target"] == {"met": None}  # no fused row: not judged
    assert "Target not judged" in (tmp_path / "train_gpu.md").read_text()


@pytest.mark.slow
def test_the_captioning_benchmark_runs_on_the_cpu(tmp_path: Path) -> None:
    """bench_caption_gpu.py end to end on 2 images in float32 on the CPU: the shared path embeds each image once
    (5 tiles of the tiny LLaVA-NeXT's anyres grid) where prompt by prompt embeds it for each of the 5 prompts,
    and the captions are the same."""
    args = ["--device", "cpu", "--images", "2", "--batch-images", "2", "--max-new-tokens", "3", "--rounds", "1"]
    args += ["--dtypes", "float32", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(GPU / "bench_caption_gpu.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (case,) = json.loads((tmp_path / "caption_gpu.json").read_text())["cases"]
    shared, per_prompt = case["counts"]["shared"], case["counts"]["prompt by prompt"]
    assert per_prompt["vision_rows"] == 5 * shared["vision_rows"] > 0
    assert shared["prefill_tokens"] < 0.3 * per_prompt["prefill_tokens"]
    assert case["captions_equal"] == [10, 10]
    assert set(case["rates"]) == {"shared", "prompt by prompt"} and case["notices"] == []
