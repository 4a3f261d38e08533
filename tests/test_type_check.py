"""The documented Python type-checks as written: mypy reads the README's notebook example and every block of
docs/extending.md against vlmkd's own signatures. vlmkd's modules are read for their types (their own errors are
not reported); the dependencies are not analysed (their names are Any), which keeps a cold run to seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from _markdown import ROOT, block_after, python_blocks

pytest.importorskip("mypy")

MYPY_CONFIG = """\
[mypy]
follow_imports = skip
[mypy-vlmkd.*]
follow_imports = silent
"""
ERROR = re.compile(r"^(?P<file>[\w.]+\.py):(?P<line>\d+): error: (?P<message>.*)$")


def checked_files() -> dict[str, str]:
    """file name -> the code mypy checks: each block as written; a block that goes in an existing module is
    checked among that module's names (`from vlmkd.models.zoo import *` before it)."""
    files = {"readme_example.py": block_after("README.md", "<!-- notebook-example -->").text}
    for number, block in enumerate(python_blocks("docs/extending.md")):
        prefix = f"from {block.module} import *  # the module it goes in\n" if block.adds_to_existing_file else ""
        files[f"extending_{number}.py"] = prefix + block.text
    files["wrong_call.py"] = "import vlmkd\n\nvlmkd.train(3)\n"  # the control: the checker must see vlmkd's types
    return files


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """file name -> mypy's errors in it ("line: message"), one mypy run over every checked file."""
    folder = tmp_path_factory.mktemp("type_check")
    files = checked_files()
    for name, code in files.items():
        (folder / name).write_text(code)
    (folder / "mypy.ini").write_text(MYPY_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(folder / "cache"), *files],
        cwd=folder, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors: dict[str, list[str]] = {name: [] for name in files}
    for line in result.stdout.splitlines():
        found = ERROR.match(line)
        if found:
            errors[found["file"]].append(f"{found['line']}: {found['message']}")
    assert result.returncode in (0, 1), f"mypy did not run:\n{result.stdout}\n{result.stderr}"
    return errors


def test_the_readme_notebook_example_type_checks(mypy_errors: dict[str, list[str]]) -> None:
    assert mypy_errors["readme_example.py"] == []


def test_every_extending_recipe_type_checks(mypy_errors: dict[str, list[str]]) -> None:
    blocks = python_blocks("docs/extending.md")
    assert len(blocks) == 7  # backbone file and line, engine file and line, task loss, backend file and line
    wrong = {blocks[n].source: e for n in range(len(blocks)) if (e := mypy_errors[f"extending_{n}.py"])}
    assert wrong == {}


def test_the_checker_reads_vlmkd_signatures(mypy_errors: dict[str, list[str]]) -> None:
    (error,) = mypy_errors["wrong_call.py"]
    assert error.startswith('3: Argument 1 to "train" has incompatible type "int"; expected "TrainConfig | None"')


def test_the_checked_blocks_name_their_files() -> None:
    for block in python_blocks("docs/extending.md"):
        assert block.file is not None, f"{block.source}: the block's first line must name its file"
