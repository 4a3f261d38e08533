"""The argparse parser of every vlmkd CLI: one-line errors with a did-you-mean, one generated default per option.

A typo prints `prog: error: <what>; did you mean <closest>? (see prog --help)` and exits 2, instead of the
whole usage block. Help texts get `(default: X)` from the option's real default, once: options whose help
already says what their default is, flags that are off by default and options without a default get none.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

_BOOLEAN_DEFAULT = " (default: %(default)s)"
_UNRECOGNIZED = "unrecognized arguments: "
_INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>'[^']*'|\S+) \(choose from (?P<choices>.*)\)$")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate `word` most likely misspells: a close spelling, else the only one it is a prefix of."""
    candidates = [str(c) for c in candidates]
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    stem = word.lstrip("-")
    prefixed = [c for c in candidates if stem and c.lstrip("-").startswith(stem)]
    return prefixed[0] if len(prefixed) == 1 else None


def format_default(value: Any) -> str:
    """A default as a user would type it: lists space-separated, paths and strings bare, booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(format_default(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def did_you_mean(message: str, options: Iterable[str]) -> str | None:
    """The correction for an argparse error message: a close option for an unknown one, a close choice."""
    if message.startswith(_UNRECOGNIZED):
        options = list(options)
        for token in message[len(_UNRECOGNIZED) :].split():
            if token.startswith("-"):
                match = closest(token.split("=", 1)[0], options)
                if match:
                    return match
        return None
    found = _INVALID_CHOICE.search(message)
    if found is None:
        return None
    try:
        value = ast.literal_eval(found["value"]) if found["value"].startswith("'") else found["value"]
        choices = ast.literal_eval(f"[{found['choices']}]")
    except (ValueError, SyntaxError):
        return None
    return closest(str(value), [str(c) for c in choices])


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to an option's help unless it already names its default or has none to name."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = (action.help or "").removesuffix(_BOOLEAN_DEFAULT)  # BooleanOptionalAction's own, in Python < 3.13
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or default is False
            or default in ("", [], ())
            or isinstance(action, (argparse._StoreConstAction, argparse._HelpAction, argparse._VersionAction))
        ):
            return text
        value = format_default(default).replace("%", "%%")
        return f"{text} (default: {value})" if text else f"(default: {value})"


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with vlmkd's help format and one-line errors (subparsers inherit both)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def all_option_strings(self) -> list[str]:
        """Every option string of this parser and of its subcommands' parsers."""
        found: list[str] = []
        for action in self._actions:
            found += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += sub.all_option_strings() if isinstance(sub, ArgumentParser) else []
        return list(dict.fromkeys(found))

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message; did you mean X? (see prog --help)` on one line and exit 2."""
        match = did_you_mean(message, self.all_option_strings())
        hint = f"; did you mean {match}?" if match else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")
