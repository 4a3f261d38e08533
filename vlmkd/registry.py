"""One small name -> object table for everything chosen by name: engines, backbones, task losses, backends.

A registry entry is an object or a lazy `"module:attribute"` target (imported on first `get`, so listing
names never imports a heavy dependency). CLI choices, `vlmkd info`, `vlmkd.backends()` and the error for an
unknown name all read the same table, so a name added with one `register` line appears everywhere at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from vlmkd.arguments import closest
from vlmkd.errors import InputError

T = TypeVar("T")


def choice_error(setting: str, value: object, choices: Iterable[str]) -> InputError:
    """`setting must be one of a, b, c, got 'x' (did you mean 'a'?)` as an InputError."""
    names = list(choices)
    return InputError(f"{setting} must be one of {', '.join(names)}, got {value!r}{did_you_mean(value, names)}")


def did_you_mean(value: object, names: Iterable[str]) -> str:
    """` (did you mean 'name'?)` for the name `value` most likely misspells (`vlmkd.arguments.closest`), or ""."""
    match = closest(value, names) if isinstance(value, str) and value else None
    return f" (did you mean {match!r}?)" if match else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name: what it stands for (`target`, maybe a lazy "module:attribute") and one line about it."""

    name: str
    target: T | str
    description: str


class Registry(Generic[T]):
    """Names of one kind (`setting` is how errors call a name: "arch", "engine", "backend") in registration order."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self._entries: dict[str, Entry[T]] = {}
        self._resolved: dict[str, T] = {}

    def register(self, name: str, target: T | str, description: str) -> None:
        """Add `name`; `target` is the object or a lazy "module:attribute" string. Names are unique."""
        if name in self._entries:
            raise ValueError(f"{self.setting} {name!r} is already registered")
        self._entries[name] = Entry(name, target, description)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def check(self, name: object, setting: str | None = None) -> str:
        """`name` if registered, else an InputError naming `setting` (default: this registry's) and the choices."""
        if not isinstance(name, str) or name not in self._entries:
            raise choice_error(setting or self.setting, name, self._entries)
        return name

    def get(self, name: object, setting: str | None = None) -> T:
        """The object registered as `name` (importing a lazy target now); InputError for an unknown name."""
        name = self.check(name, setting)
        if name not in self._resolved:
            target = self._entries[name].target
            if isinstance(target, str):
                module, _, attribute = target.partition(":")
                target = getattr(importlib.import_module(module), attribute)
            self._resolved[name] = target
        return self._resolved[name]

    def description(self, name: str) -> str:
        return self._entries[self.check(name)].description

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.setting!r}: {', '.join(self._entries)})"


__all__ = ["Entry", "Registry", "choice_error", "did_you_mean"]
