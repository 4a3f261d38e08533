"""Package namespaces whose names are imported on first use, so that `import vlmkd` and its stage packages stay cheap.

A package writes what it exports as ordinary imports inside `if TYPE_CHECKING:` (what type checkers and readers
see) and ends with `__getattr__, __dir__ = lazy_exports(__name__, __file__)`, which reads those import lines and
imports a name's module the first time the name is used (PEP 562). The import lines are the one list of where
each name comes from.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose `__init__.py` is `init_file`."""
    sources = _type_checking_imports(package, Path(init_file))
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = sources[name]
        if module == package:  # `from vlmkd import data`: a subpackage
            value = importlib.import_module(f"{package}.{attribute}")
        else:
            value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(sources))

    return __getattr__, __dir__


def _type_checking_imports(package: str, init_file: Path) -> dict[str, tuple[str, str]]:
    """name -> (module, attribute) for each `from module import attribute [as name]` under `if TYPE_CHECKING:`."""
    sources = {}
    for node in ast.parse(init_file.read_text(), filename=str(init_file)).body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom) or statement.level or statement.module is None:
                raise TypeError(f"{init_file}: only absolute `from module import name` lines are lazy")
            for alias in statement.names:
                sources[alias.asname or alias.name] = (statement.module, alias.name)
    return sources
