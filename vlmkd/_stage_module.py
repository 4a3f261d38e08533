"""Stage subpackages that are also their stage's Python entry point: `vlmkd.train(...)` is `vlmkd.api.train(...)`.

`vlmkd.caption`, `vlmkd.encode`, `vlmkd.train` and `vlmkd.evaluate` are packages (their modules stay
importable as before) whose module objects are callable, so the curated calls and the packages share a name.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class StageModule(types.ModuleType):
    """A module whose call runs the `vlmkd.api` function of the same name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from vlmkd import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the (already imported) module `module_name` callable as its stage's entry point."""
    sys.modules[module_name].__class__ = StageModule
