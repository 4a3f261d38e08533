"""benchmarks/gpu/run.sh, the prepared GPU session: its dry run passes here and catches a step that cannot run."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu" / "run.sh"
STEPS = (
    "env", "build", "contrastive", "cuda_tests", "train_r50", "amp_check", "caption_shared", "trt", "train_bf16",
    "train_fp16", "tiny_vlm", "caption", "loader", "targets",
)  # fmt: skip


def dry_run(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return run(script, tmp_path, "--dry-run", **env)


def run(script: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=300)


def checked_steps(stdout: str) -> list[str]:
    return [line.removeprefix("dry run: step ").split(":")[0] for line in stdout.splitlines()]


@pytest.mark.slow
def test_dry_run_checks_every_step_and_passes(tmp_path: Path) -> None:
    result = dry_run(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s for s in checked_steps(result.stdout) if s in STEPS] == list(STEPS)
    assert "dry run: 0 problem(s)" in result.stdout
    # the requires_cuda tests were collected, not only named
    assert re.search(r"dry run: step cuda_tests: .* \([1-9][0-9]*/[0-9]+ tests collected", result.stdout)


@pytest.mark.slow
def test_steps_picks_the_steps_of_a_rerun(tmp_path: Path) -> None:
    result = dry_run(SCRIPT, tmp_path, STEPS="trt,caption_shared", BUILD="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s for s in checked_steps(result.stdout) if s in STEPS] == ["env", "caption_shared", "trt", "targets"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed here")
def test_a_step_that_says_not_run_is_recorded_so_and_targets_are_judged(tmp_path: Path) -> None:
    """A real (not dry) run of the trt step where TensorRT-LLM is missing: recorded as not run, not failed; the
    targets step still writes targets.md, every target not measured."""
    result = run(SCRIPT, tmp_path, STEPS="trt", BUILD="0")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| trt | not run (TensorRT-LLM not installed" in summary
    assert "failed steps: 0" in summary
    targets = (tmp_path / "out" / "targets.md").read_text()
    assert targets.count("**not measured**") == 7, targets  # 3 kernel targets (2 per backend) + tests + train
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.tar.gz", "summary.md", "targets.md"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "change", "problem"),
    [
        ("caption", ("--max-new-tokens 16", "--max-new-tokenz 16"), "vlmkd caption has no --max-new-tokenz"),
        ("amp_check", ("benchmarks/gpu/amp_check.py", "benchmarks/gpu/amp_chek.py"), "amp_chek.py --help failed"),
        ("train_r50", ("--channels-last", "--channel-last"), "bench_train_gpu.py has no --channel-last"),
        ("caption_shared", ("--dtypes bfloat16 float32", "--dtypes bf16"), "bench_caption_gpu.py --dry-run failed"),
        ("tiny_vlm", ("make-tiny llava ", "make-tiny lava "), "vlmkd models make-tiny lava --help failed"),
        ("cuda_tests", ("-m requires_cuda", "-m requires_cudaa"), "step cuda_tests: pytest could not collect"),
        ("cuda_tests", ('"requires_cuda" tests', '"requires_cudaa" tests'), "step cuda_tests: pytest selected no test"),
        ("trt", ("trt_step.sh", "trt_stepp.sh"), "trt_stepp.sh does not parse"),
    ],
)  # fmt: skip
def test_dry_run_fails_on_an_unknown_flag_or_script(
    tmp_path: Path, step: str, change: tuple[str, str], problem: str
) -> None:
    broken = SCRIPT.parent / f"_broken_{os.getpid()}.sh"  # beside the original: it cds to the repository root
    try:
        broken.write_text(SCRIPT.read_text().replace(*change))
        result = dry_run(broken, tmp_path, STEPS=step, BUILD="0")  # the broken step alone (and env, targets)
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert problem in result.stdout


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)
