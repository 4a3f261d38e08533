"""vlmkd installs beside TensorRT-LLM: pip's resolver finds one set of packages that satisfies vlmkd's requirements
(core and `vision`, read from pyproject.toml) and a TensorRT-LLM release's published pins together.

The pins of each release are written down in tests/tensorrt_llm_pins/RELEASE.txt (from the Requires-Dist of its
PyPI entry). Resolving only: `--dry-run` with pip's `fast-deps` reads each wheel's metadata by HTTP range requests
instead of downloading the wheels (the index here does not announce the separate metadata files), so the torch
builds the pins select are never downloaded. Needs PyPI (reachable here and in CI).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("tensorrt_llm_pins")
SUPPORTED_RELEASES = ["1.2.1", "1.4.0rc1"]  # latest stable, newest pre-release on 2026-12-06

pytestmark = pytest.mark.slow


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def vlmkd_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["dependencies"] + project["optional-dependencies"]["vision"]


def resolve(requirements: list[str], constraints: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """pip's resolver over `requirements` under `constraints`, for this interpreter; the report in tmp_path."""
    listed = tmp_path / "requirements.txt"
    listed.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    command = [
        sys.executable, "-m", "pip", "--disable-pip-version-check",
        "install", "--dry-run", "--ignore-installed", "--only-binary", ":all:", "--use-feature=fast-deps",
        "--index-url", "https://pypi.org/simple", "--report", str(tmp_path / "report.json"),
        "-r", str(listed), "-c", str(constraints),
    ]  # fmt: skip
    # No pip configuration of this machine (local wheel folders, a cap on torch): PyPI alone, as a user has it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") or key == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def pinned(constraints: Path) -> list[Requirement]:
    lines = constraints.read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


requires_pypi = pytest.mark.skipif(not _pypi_reachable(), reason="needs PyPI (pypi.org:443)")


@requires_pypi
@pytest.mark.parametrize("release", SUPPORTED_RELEASES)
def test_vlmkd_resolves_beside_tensorrt_llm_pins(release, tmp_path):
    constraints = PINS / f"{release}.txt"
    result = resolve(vlmkd_requirements(), constraints, tmp_path)
    assert result.returncode == 0, f"TensorRT-LLM {release}: {result.stderr[-3000:]}"
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    # The report itself, checked against the release's pins: what TensorRT-LLM pins and vlmkd needs.
    for name in ("torch", "transformers", "numpy"):
        pin = next(req for req in pinned(constraints) if req.name.lower() == name)
        assert pin.specifier.contains(chosen[name], prereleases=True), (release, name, chosen[name], pin)


@requires_pypi
def test_the_resolver_refuses_a_release_whose_pins_vlmkd_cannot_meet(tmp_path):
    """TensorRT-LLM 1.1.0 pins transformers==4.56.0, below vlmkd's floor: the same check fails there."""
    result = resolve(vlmkd_requirements(), PINS / "1.1.0.txt", tmp_path)
    assert result.returncode != 0
    assert "transformers" in result.stderr and "conflict" in result.stderr.lower()
