"""The package layout keeps its promises: the library never imports its test and demo fixtures (`vlmkd.testing`)
except from the entry points that exist to use them, and the reports (`vlmkd.reporting`) sit above the stages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

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


def module_name(path: Path) -> str:
    parts = ("vlmkd", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """vlmkd module -> the vlmkd modules it imports anywhere in its file (inside functions and TYPE_CHECKING
    blocks too: a deferred import is still a dependency). `from pkg import name` counts as importing `pkg.name`
    where that is a module, else `pkg`."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
                targets = [t for t in targets[:-1] if t in modules] or [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import vlmkd._C` -> vlmkd (a native module)
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search for an edge back to the current path)."""
    done: set[str] = set()
    for start in sorted(graph):
        path, stack = [start], [iter(sorted(graph[start]))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                done.add(path.pop())
                stack.pop()
            elif target in path:
                return [*path[path.index(target) :], target]
            elif target not in done:
                path.append(target)
                stack.append(iter(sorted(graph[target])))
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"vlmkd", "vlmkd.pipeline", "vlmkd.train.trainer"} <= set(graph)
    assert "vlmkd.train.config" in graph["vlmkd.train"] and "vlmkd.pipeline" in graph["vlmkd"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_a_cycle_through_a_deferred_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_each_choice_list_has_one_source():
    from vlmkd.data.loaders import LOADERS
    from vlmkd.losses.contrastive import NEGATIVES
    from vlmkd.losses.objective import VlmkdObjective
    from vlmkd.losses.task import TaskLoss
    from vlmkd.ops.contrastive_reference import POSITIVES
    from vlmkd.train.config import choices
    from vlmkd.train.record_fields import LOSS_TERMS
    from vlmkd.train.tensorboard_log import TAGS

    assert (choices("positives"), choices("negatives"), choices("loader")) == (POSITIVES, NEGATIVES, LOADERS.names())
    objective = VlmkdObjective(TaskLoss("ce", None))
    parts = objective(torch.randn(4, 3), torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    assert [name for name in parts if name != "vlmkd_chance"] == list(LOSS_TERMS) and set(LOSS_TERMS) <= set(TAGS)


def test_the_temperature_clamp_is_written_only_in_the_op():
    clamp = re.compile(r"log\(100(\.0)?\)")
    files = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if clamp.search(p.read_text())}
    assert files == {"ops/contrastive_reference.py"}
