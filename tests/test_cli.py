"""Every command of `vlmkd` and every `vlmkd-*` console script is built and prints readable help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkd import cli

CONSOLE_SCRIPTS = {
    "vlmkd-caption": "caption",
    "vlmkd-encode": "encode",
    "vlmkd-train": "train",
    "vlmkd-eval": "eval",
}


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_is_built_and_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out.splitlines()) >= 3


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_are_installed_and_route_to_their_command(script: str, tmp_path: Path) -> None:
    executable = shutil.which(script) or str(Path(sys.executable).parent / script)
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS.entries():
        assert command.name in out and command.description in out


def test_the_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    import vlmkd
    from vlmkd.version import __version__

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # built from vlmkd/version.py
    assert importlib.metadata.version("vlmkd") == vlmkd.__version__ == __version__
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out == f"vlmkd {__version__}\n"
