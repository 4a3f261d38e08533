"""One small name -> object table for everything chosen by name: engines, backbones, task losses, backends.

A registry entry is an object or a lazy `"module:attribute"` target (imported on first `get`, so listing
names never imports a heavy dependency). CLI choices, `vlmkd info`, `vlmkd.backends()` and the error for an
unknown name all read the same table, so a name added with one `register` line appears everywhere at once.
A family (`register_family("timm:", ...)`) stands for every name with its prefix, such as `timm:resnet50`;
its own check validates the part after the prefix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
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


@dataclass(frozen=True)
class Family(Generic[T]):
    """Every name starting with `prefix`: one target for all of them, and a check of a whole name (lazy or not)."""

    prefix: str
    target: T | str
    description: str
    check: Callable[[str], object] | str | None = None  # raises InputError for a bad name of the family
    examples: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        """How help texts write the family: `timm:NAME`."""
        return f"{self.prefix}NAME"


def resolve(target: object) -> object:
    """`target` itself, or the object a lazy "module:attribute" string names (imported now)."""
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return target


class Registry(Generic[T]):
    """Names of one kind (`setting` is how errors call a name: "arch", "engine", "backend") in registration order."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self._entries: dict[str, Entry[T]] = {}
        self._families: dict[str, Family[T]] = {}
        self._resolved: dict[str, T] = {}

    def register(self, name: str, target: T | str, description: str) -> None:
        """Add `name`; `target` is the object or a lazy "module:attribute" string. Names are unique."""
        if name in self._entries:
            raise ValueError(f"{self.setting} {name!r} is already registered")
        self._entries[name] = Entry(name, target, description)

    def register_family(
        self,
        prefix: str,
        target: T | str,
        description: str,
        *,
        check: Callable[[str], object] | str | None = None,
        examples: tuple[str, ...] = (),
    ) -> None:
        """Add every name starting with `prefix` (e.g. "timm:"); `check(name)` raises for a bad one."""
        if prefix in self._families or any(name.startswith(prefix) for name in self._entries):
            raise ValueError(f"{self.setting} family {prefix!r} clashes with a registered name")
        self._families[prefix] = Family(prefix, target, description, check, examples)

    def families(self) -> tuple[Family[T], ...]:
        return tuple(self._families.values())

    def family(self, name: object) -> Family[T] | None:
        """The family `name` belongs to, if any."""
        if not isinstance(name, str):
            return None
        return next((f for prefix, f in self._families.items() if name.startswith(prefix)), None)

    def choices_text(self) -> str:
        """The names and family patterns, for help texts and errors: `a, b, timm:NAME`."""
        return ", ".join([*self._entries, *(f.pattern for f in self._families.values())])

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def check(self, name: object, setting: str | None = None) -> str:
        """`name` if registered (or a valid name of a family), else an InputError naming `setting` (default: this
        registry's) and the choices."""
        family = self.family(name)
        if family is not None:
            assert isinstance(name, str)
            if family.check is not None:
                resolve(family.check)(name)
            return name
        if not isinstance(name, str) or name not in self._entries:
            patterns = [f.pattern for f in self._families.values()]
            raise choice_error(setting or self.setting, name, [*self._entries, *patterns])
        return name

    def get(self, name: object, setting: str | None = None) -> T:
        """The object registered as `name` (importing a lazy target now); InputError for an unknown name."""
        name = self.check(name, setting)
        family = self.family(name)
        key = family.prefix if family is not None else name
        if key not in self._resolved:
            self._resolved[key] = resolve(family.target if family is not None else self._entries[name].target)
        return self._resolved[key]

    def description(self, name: str) -> str:
        family = self.family(name)
        return family.description if family is not None else self._entries[self.check(name)].description

    def __contains__(self, name: object) -> bool:
        """Registered, or of a family's form (not checked: `check` runs the family's own check)."""
        return name in self._entries or self.family(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.setting!r}: {', '.join(self._entries)})"


__all__ = ["Entry", "Family", "Registry", "choice_error", "did_you_mean"]
