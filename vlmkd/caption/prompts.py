"""Prompt sets as data: a YAML/JSON file of prompts with stable ids, `{label}` filled from the class name."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vlmkd.bounded_read import parse_json, parse_yaml, read_text_file, short_repr
from vlmkd.caption.store import prompt_set_record
from vlmkd.errors import InputError

DEFAULT_PROMPT_SET = "default"
PLACEHOLDERS = frozenset({"label"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOP_KEYS = frozenset({"name", "description", "prompts"})
_PROMPT_KEYS = frozenset({"id", "template", "description"})


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id (stores refer to it) and a template that may use `{label}`."""

    id: str
    template: str

    def render(self, label: str) -> str:
        """The prompt text for an image of class `label`."""
        return self.template.format(label=label)


@dataclass(frozen=True)
class PromptSet:
    """An ordered, named set of prompts with unique ids."""

    name: str
    prompts: tuple[Prompt, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(prompt.id for prompt in self.prompts)

    def record(self) -> dict[str, Any]:
        """The manifest record (name, fingerprint, prompts) caption stores keep."""
        return prompt_set_record(self.name, {prompt.id: prompt.template for prompt in self.prompts})


def is_prompt_id(text: str) -> bool:
    """Whether `text` is a valid prompt id: 1-64 characters of letters, digits, '_', '.', '-'."""
    return _ID_RE.fullmatch(text) is not None


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with vlmkd (usable as `--prompts NAME`)."""
    folder = resources.files("vlmkd.caption") / "prompt_sets"
    return sorted(entry.name.rsplit(".", 1)[0] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_prompt_set(source: str | Path | None = None) -> PromptSet:
    """Load a prompt set from a YAML/JSON file, or a shipped set by name; None means the default set.

    Raises `InputError` naming the file and the problem for anything malformed.
    """
    if source is None:
        source = DEFAULT_PROMPT_SET
    path = Path(source)
    if not path.exists() and str(source) in shipped_prompt_sets():
        resource = resources.files("vlmkd.caption") / "prompt_sets" / f"{source}.yaml"
        return parse_prompt_set(resource.read_text(encoding="utf-8"), f"<shipped prompt set {source}>")
    if not path.is_file():
        shipped = ", ".join(shipped_prompt_sets())
        raise InputError(f"{path}: prompt file not found (shipped prompt sets: {shipped})")
    text = read_text_file(path, "prompt file")  # bounded in size, UTF-8, byte-order mark removed
    return parse_prompt_set(text, str(path), default_name=path.stem, is_json=path.suffix.lower() == ".json")


def parse_prompt_set(text: str, where: str, *, default_name: str = "custom", is_json: bool = False) -> PromptSet:
    """Parse and validate prompt-set text; `where` names the file in error messages."""
    data = parse_json(text, where) if is_json else parse_yaml(text, where)  # aliases bounded, one-line errors
    if isinstance(data, list):
        data = {"prompts": data}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with a 'prompts' list, got {type(data).__name__}")
    _reject_unknown_keys(data, _TOP_KEYS, where)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: 'name' must be a non-empty string")
    items = data.get("prompts")
    if not isinstance(items, list) or not items:
        raise InputError(f"{where}: 'prompts' must be a non-empty list")
    prompts = [_parse_prompt(item, f"{where}: prompt {number}") for number, item in enumerate(items, start=1)]
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise InputError(f"{where}: duplicate prompt id {short_repr(prompt.id)}")
        seen.add(prompt.id)
    return PromptSet(name=name.strip(), prompts=tuple(prompts))


def _reject_unknown_keys(mapping: dict, allowed: frozenset[str], where: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise InputError(f"{where}: unknown keys {short_repr(sorted(map(str, unknown)))} (allowed: {sorted(allowed)})")


def _parse_prompt(item: object, where: str) -> Prompt:
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a mapping with 'id' and 'template', got {type(item).__name__}")
    _reject_unknown_keys(item, _PROMPT_KEYS, where)
    prompt_id, template = item.get("id"), item.get("template")
    if not isinstance(prompt_id, str) or not _ID_RE.fullmatch(prompt_id):
        raise InputError(
            f"{where}: 'id' must be 1-64 characters of letters, digits, '_', '.', '-', got {short_repr(prompt_id)}"
        )
    if not isinstance(template, str) or not template.strip():
        raise InputError(f"{where} ({prompt_id}): 'template' must be a non-empty string")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as error:
        raise InputError(f"{where} ({prompt_id}): bad template ({error}); write literal braces as {{{{ }}}}") from None
    names = {name for name, _, _ in fields if name is not None}
    if not names <= PLACEHOLDERS:
        unknown_names = short_repr(sorted(names - PLACEHOLDERS))
        raise InputError(f"{where} ({prompt_id}): unknown placeholders {unknown_names}; only {{label}}")
    if any(name is not None and (spec or conversion) for name, spec, conversion in fields):
        raise InputError(f"{where} ({prompt_id}): write the placeholder as plain {{label}}, without '!' or ':'")
    return Prompt(id=prompt_id, template=template.strip())
