"""The package layout keeps its promises: the library never imports its test and demo fixtures (`vlmkd.testing`)
except from the entry points that exist to use them, and the reports (`vlmkd.reporting`) sit above the stages."""

from __future__ import annotations

import ast
from pathlib import Path

import vlmkd

PACKAGE = Path(vlmkd.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-local imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_importing(prefix: str) -> set[str]:
    """Files of the package (relative to it) outside `prefix`'s own package that import `prefix` or below it."""
    own = PACKAGE.joinpath(*prefix.split(".")[1:])
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if own not in path.parents
        and any(name == prefix or name.startswith(prefix + ".") for name in imported_modules(path))
    }


def test_only_the_demo_imports_the_testing_fixtures():
    # `vlmkd models make-tiny` reaches vlmkd.testing.models_cli through the CLI's command table, by name
    assert modules_importing("vlmkd.testing") == {"demo.py"}


def test_reporting_is_imported_only_by_the_caption_cli_and_the_evaluation_that_returns_figures():
    # the evaluate stage's result holds its figures (`EvalResult.figures`); `vlmkd plot` names its module by string
    assert modules_importing("vlmkd.reporting") == {"caption/cli.py", "evaluate/run.py"}
