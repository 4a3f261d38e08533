"""Typed stage configs: dataclasses whose fields are checked against their type hints on construction.

A `StageConfig` subclass lists its settings as annotated dataclass fields. Building one (from Python, a YAML
file or command-line flags) checks every value against its field's type: `int`, `float` (ints widen), `bool`,
`str` (a `Path` is accepted), `Path` (a `str` is accepted), `X | None`, `list[...]` and nested configs; then
the subclass's `check()` checks allowed values. Both raise `InputError` naming the setting. `to_dict()` is
plain YAML/JSON data (paths as strings) and `from_dict(to_dict())` gives the same config back.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlmkd.bounded_read import read_yaml_file, short_repr
from vlmkd.errors import InputError
from vlmkd.registry import did_you_mean

C = TypeVar("C", bound="StageConfig")
_BAD = object()
MAX_CONFIG_BYTES = 1 << 20  # a settings file larger than this is not a settings file


class StageConfig:
    """Base of the typed configs (`CaptionConfig`, `EncodeConfig`, `TrainConfig`, `EvalConfig`, ...).

    Subclasses are dataclasses (frozen or not); this mixin adds the checks on construction and the
    conversions to and from plain data and YAML.
    """

    def __post_init__(self) -> None:
        where = type(self).__name__
        for name, value in coerce_settings(type(self), {f.name: getattr(self, f.name) for f in _fields(self)}, where):
            object.__setattr__(self, name, value)  # also on frozen dataclasses
        self.check()

    def check(self) -> None:
        """Value checks beyond the types (choices, ranges); raise `InputError` naming the setting."""

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (paths as strings, nested configs as mappings)."""
        return {f.name: _plain(getattr(self, f.name)) for f in _fields(self)}

    @classmethod
    def from_dict(cls: type[C], settings: dict[str, Any], where: str | None = None) -> C:
        """A config from a mapping of settings; unknown names and bad values are `InputError`s naming `where`."""
        return cls(**dict(coerce_settings(cls, settings, where or cls.__name__)))

    @classmethod
    def from_namespace(cls: type[C], namespace: object, **settings: Any) -> C:
        """A config from parsed command-line flags: every field named like a flag's `dest`, then `settings`.

        A CLI maps onto its config in one call; only flags named otherwise (`--no-progress`) need `settings`.
        """
        flags = {name: getattr(namespace, name) for name in setting_names(cls) if hasattr(namespace, name)}
        return cls.from_dict({**flags, **settings})

    def to_yaml(self, path: str | Path) -> Path:
        """Write the settings as YAML (atomically), loadable again with `from_yaml`."""
        from vlmkd.atomic_files import write_text_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False), durable=False)
        return path

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(read_yaml_mapping(Path(path)), str(path))

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)


def _fields(config: StageConfig | type[StageConfig]) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(config) if f.init)


def setting_names(cls: type[StageConfig]) -> list[str]:
    return [f.name for f in _fields(cls)]


def coerce_settings(cls: type, settings: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    """(name, value) pairs with each value checked against (and brought to) its field's type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(settings) - known)
    if len(unknown) == 1:
        raise InputError(f"{where}: unknown setting {unknown[0]!r}{did_you_mean(unknown[0], sorted(known))}")
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = []
    for name, value in settings.items():
        typed = typed_value(name, value, hints[name], where, fields[name].metadata.get("length"))
        check_range(name, typed, fields[name].metadata.get("range"), where)
        checked.append((name, typed))
    return checked


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: bounds, each inclusive or not (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        words = (("at least", self.ge), ("greater than", self.gt), ("at most", self.le), ("less than", self.lt))
        return " and ".join(f"{word} {bound:g}" for word, bound in words if bound is not None)

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def in_range(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
             lt: float | None = None, **metadata: Any) -> dict[str, Any]:  # fmt: skip
    """Field metadata declaring a numeric setting's range, checked on construction like its type."""
    return {"range": Range(ge, gt, le, lt), **metadata}


def check_range(name: str, value: Any, allowed: Range | None, where: str) -> None:
    """The one numeric guard of every config: each float (or list item) is finite, and within `allowed` if given.

    A NaN learning rate or temperature trains silently to NaN weights; a negative one is as wrong, and both are
    refused here, before any work, naming the setting.
    """
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise InputError(f"{where}: {name} must be a finite number; got {item}")
        if allowed is not None and not allowed.holds(item):
            raise InputError(f"{where}: {name} must be {allowed.describe()}; got {item:g}")


def typed_value(name: str, value: Any, hint: Any, where: str, length: int | None = None) -> Any:
    """`value` as a `hint`-typed setting (ints widen to floats, str to Path), or `InputError`.

    `length` (a field's `metadata={"length": n}`) fixes the number of items of a list setting.
    """
    optional = _is_optional(hint)
    kind = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if optional else hint
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if isinstance(value, kind):
            return value
        if isinstance(value, dict):
            try:
                return kind(**dict(coerce_settings(kind, value, f"{where}: {name}")))
            except TypeError as error:  # a dataclass that is not a StageConfig rejects a missing field itself
                raise InputError(f"{where}: {name}: {error}") from None
    elif typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            return dict(value)
    elif typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        if isinstance(value, (list, tuple)):
            items = [_scalar(v, item) for v in value]
            if all(v is not _BAD for v in items) and length in (None, len(items)):
                return items
    elif (checked := _scalar(value, kind)) is not _BAD:
        return checked
    expected = _describe(kind, length)
    raise InputError(f"{where}: {name} must be {expected}{' or null' if optional else ''}, got {short_repr(value)}")


def _scalar(value: Any, kind: Any) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if kind is int:
        return value if isinstance(value, int) else _BAD
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else _BAD
    if kind is Path:
        if isinstance(value, os.PathLike) or (isinstance(value, str) and value):
            return Path(value)
        return _BAD
    if kind is str and isinstance(value, os.PathLike):  # a name-or-path setting (a model, an encoder)
        return os.fspath(value)
    if kind is Any:
        return value
    return value if isinstance(kind, type) and isinstance(value, kind) else _BAD


def _describe(kind: Any, length: int | None = None) -> str:
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    if kind in simple:
        return simple[kind]
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        items = {float: "numbers", str: "strings", int: "integers"}.get(item, "items")
        return f"a list of {'' if length is None else f'{length} '}{items}"
    if dataclasses.is_dataclass(kind):
        return f"a mapping of {kind.__name__} settings"
    if typing.get_origin(kind) is dict:
        return "a mapping"
    return str(kind)


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, StageConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file; unreadable, oversized, non-UTF-8, alias-bomb or malformed
    files are `InputError`s naming the file (through the bounded readers of `vlmkd.bounded_read`)."""
    data = read_yaml_file(path, "settings file", max_bytes=MAX_CONFIG_BYTES) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    return data
