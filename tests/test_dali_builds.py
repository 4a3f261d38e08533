"""Which DALI wheel is installed (CUDA 12 or CUDA 13 build), whether this machine's driver runs it, and what
`vlmkd info` says: against the real installed wheel, and with the distribution lookup and driver query replaced
for the other cases. The extras in pyproject.toml name the wheels."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from vlmkd.data import dali_loader
from vlmkd.data.dali_loader import (
    DaliBuild,
    check_driver,
    dali_summary,
    driver_cuda_version,
    import_dali,
    installed_dali,
)
from vlmkd.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]


def pretend_installed(monkeypatch, versions: dict[str, str]) -> None:
    """`importlib.metadata.version` answers for the DALI distributions in `versions` only."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name in dali_loader.DALI_BUILDS:
            if name in versions:
                return versions[name]
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_the_installed_wheel_is_found_by_its_distribution():
    wheels = {name for name in dali_loader.DALI_BUILDS if _installed(name)}
    build = installed_dali()
    if not wheels:
        assert build is None
        return
    (name,) = wheels
    assert build == DaliBuild(name, importlib.metadata.version(name), dali_loader.DALI_BUILDS[name])
    assert import_dali().__version__ == build.version  # the nvidia.dali it installed imports


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(("distribution", "cuda"), [("nvidia-dali-cuda120", 12), ("nvidia-dali-cuda130", 13)])
def test_either_build_is_picked(monkeypatch, distribution, cuda):
    pretend_installed(monkeypatch, {distribution: "2.4.0"})
    assert installed_dali() == DaliBuild(distribution, "2.4.0", cuda)


def test_both_builds_at_once_are_refused_and_none_names_both_extras(monkeypatch):
    pretend_installed(monkeypatch, {"nvidia-dali-cuda120": "2.4.0", "nvidia-dali-cuda130": "2.4.0"})
    with pytest.raises(MissingDependencyError, match="both nvidia-dali-cuda120 and nvidia-dali-cuda130 are installed"):
        installed_dali()
    assert dali_summary().startswith("DALI: broken install: both")
    pretend_installed(monkeypatch, {})
    with pytest.raises(MissingDependencyError, match=r"vlmkd\[dali-cuda13\].*vlmkd\[dali-cuda12\]"):
        import_dali()
    assert dali_summary().startswith("DALI: not installed")


def test_a_driver_too_old_for_the_build_is_refused_with_the_build_that_fits():
    cuda13, cuda12 = DaliBuild("nvidia-dali-cuda130", "2.4.0", 13), DaliBuild("nvidia-dali-cuda120", "2.4.0", 12)
    fix = r"driver supports CUDA 12\.8: pip uninstall -y nvidia-dali-cuda130 && pip install 'vlmkd\[dali-cuda12\]'"
    with pytest.raises(MissingDependencyError, match=fix):
        check_driver(cuda13, (12, 8))
    with pytest.raises(MissingDependencyError, match="update the NVIDIA driver"):
        check_driver(cuda12, (11, 8))
    for build, driver in [(cuda13, (13, 0)), (cuda12, (13, 1)), (cuda12, (12, 0)), (cuda13, None)]:
        check_driver(build, driver)  # runs: a newer driver runs older builds; no driver: the CPU pipeline


def test_the_summary_says_which_dali_and_whether_the_driver_runs_it(monkeypatch):
    pretend_installed(monkeypatch, {"nvidia-dali-cuda130": "2.4.0"})
    monkeypatch.setattr(dali_loader, "driver_cuda_version", lambda: (12, 4))
    assert "nvidia-dali-cuda130 2.4.0 (built for CUDA 13" in dali_summary() and "NOT usable here" in dali_summary()
    monkeypatch.setattr(dali_loader, "driver_cuda_version", lambda: (13, 0))
    assert dali_summary().endswith("driver supports CUDA 13.0: usable")


def test_vlmkd_info_prints_the_dali_line_of_this_install(capsys):
    from vlmkd.cli import main

    build = next((DaliBuild(n, importlib.metadata.version(n), c) for n, c in dali_loader.DALI_BUILDS.items()
                  if _installed(n)), None)  # fmt: skip
    assert main(["info"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DALI:")]
    if build is None:
        assert "not installed" in line
        return
    assert line.startswith(f"DALI: {build.describe()}")
    if driver_cuda_version() is None:
        assert line.endswith("no NVIDIA driver here: DALI decodes on the CPU")


def test_the_extras_name_both_wheels():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["dali-cuda12"] == ["nvidia-dali-cuda120>=2.0"]
    assert extras["dali-cuda13"] == ["nvidia-dali-cuda130>=2.0"]
    assert extras["dali"] == ["vlmkd[dali-cuda13]"]
