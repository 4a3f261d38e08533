"""benchmarks/gpu/run.sh, the prepared GPU session: its dry run passes here and catches a step that cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu" / "run.sh"
STEPS = ("build", "contrastive", "cuda_tests", "amp_check", "train_bf16", "train_fp16", "tiny_vlm", "caption", "loader")


def dry_run(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_dry_run_checks_every_step_and_passes(tmp_path: Path) -> None:
    result = dry_run(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = [line.removeprefix("dry run: step ").split(":")[0] for line in result.stdout.splitlines()]
    assert [s for s in checked if s in STEPS] == list(STEPS)
    assert "dry run: 0 problem(s)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("--max-new-tokens 16", "--max-new-tokenz 16"), "vlmkd caption has no --max-new-tokenz"),
        (("benchmarks/gpu/amp_check.py", "benchmarks/gpu/amp_chek.py"), "amp_chek.py --help failed"),
    ],
)
def test_dry_run_fails_on_an_unknown_flag_or_script(tmp_path: Path, change: tuple[str, str], problem: str) -> None:
    broken = SCRIPT.parent / f"_broken_{os.getpid()}.sh"  # beside the original: it cds to the repository root
    try:
        broken.write_text(SCRIPT.read_text().replace(*change))
        result = dry_run(broken, tmp_path)
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert problem in result.stdout


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)
