"""Bounded readers for every YAML/JSON/text file a user hands vlmkd: size caps, alias-expansion caps, short errors.

A 400-byte YAML file can expand (through anchors and aliases) into gigabytes once walked, and echoing such a
value into an error message prints it all. Every reader of user YAML/JSON goes through this module:

- `read_text_file` refuses files over a size cap, non-UTF-8 bytes, and strips a UTF-8 byte-order mark;
- `parse_yaml` counts the nodes of the document with every alias expanded and refuses more than a bound
  (and recursive aliases), before building any Python object; PyYAML's safe loader builds the rest;
- `parse_json` refuses documents nested too deeply for the parser;
- `short_repr` is the only way a user value enters an error message: bounded in length and in depth.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from vlmkd.errors import InputError

MAX_CONFIG_BYTES = 1 << 20  # YAML/JSON settings and prompt files, list of class names: 1 MiB
MAX_STORE_JSON_BYTES = 64 << 20  # manifests, progress files, model.json written by vlmkd itself
MAX_YAML_NODES = 100_000  # scalars + collections with every alias expanded
BOM = "\ufeff"

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def short_repr(value: Any) -> str:
    """`repr(value)` cut to a few dozen characters and three levels, however large or self-referencing it is."""
    return _repr.repr(value)


def read_text_file(path: Path | str, what: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of `path` (a leading byte-order mark removed); `InputError` naming the file otherwise.

    `what` says what the file is for in messages ("training config", "prompt file", ...).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read {what} ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise InputError(f"{path}: {what} is larger than {max_bytes} bytes; refusing to read it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return text.removeprefix(BOM)


def parse_yaml(text: str, where: str, *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Data of a YAML document (safe tags only), refusing one that expands to more than `max_nodes` nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, where, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())[:200]
        raise InputError(f"{where}{position}: not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{where}: YAML document is nested too deeply") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, where: str, max_nodes: int) -> None:
    """Count nodes as if every alias were copied out (memoised per node, so this is linear in the file)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError(f"{where}: YAML document has a recursive alias")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = total
        if total > max_nodes:
            raise InputError(
                f"{where}: YAML document expands to more than {max_nodes} values (through anchors and aliases); "
                "refusing to load it"
            )
        return total

    size(root)


def parse_json(text: str, where: str) -> Any:
    """Data of a JSON document; `InputError` naming `where` (with line and column) if it is not valid JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON document is nested too deeply") from None


def read_yaml_file(path: Path | str, what: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """`parse_yaml` of a bounded `read_text_file` (JSON files are YAML too, but get JSON's error positions)."""
    text = read_text_file(path, what, max_bytes=max_bytes)
    if Path(path).suffix.lower() == ".json":
        return parse_json(text, str(path))
    return parse_yaml(text, str(path))


def read_json_file(path: Path | str, what: str, *, max_bytes: int = MAX_STORE_JSON_BYTES) -> Any:
    """`parse_json` of a bounded `read_text_file`."""
    return parse_json(read_text_file(path, what, max_bytes=max_bytes), str(path))
