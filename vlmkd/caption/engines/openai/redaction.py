"""Secrets never leave the process: every text the openai engine lets out goes through a `Redactor` first.

The secrets are the API key, gateway header values whose names say they are secret (`api-key`, `x-api-key`,
`authorization`...), secret-looking query values in `--api-base` and proxy passwords. A server's error message
may quote any of them (careless servers echo the `Authorization` header), whole or cut by the server itself, so
a redactor masks every secret and every fragment of at least `FRAGMENT_CHARS` of it, on the whole text, before
anything is cut to length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
FRAGMENT_CHARS = 10  # a quoted fragment this long of a secret is masked too (shorter secrets: whole only)
_SECRET_WORDS = ("auth", "key", "token", "secret", "passw", "cookie", "credential", "signature", "session")


def looks_secret(name: str) -> bool:
    """Whether a header or query parameter called `name` carries a secret (`api-key`, `Authorization`...)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


class Redactor:
    """Masks secrets in text: `redactor(text)`. Add more with `add` (empty values are ignored)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret:
            self._secrets.add(secret)
            self._pattern = None

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        if not self._secrets:
            return text
        if self._pattern is None:
            self._pattern = self._compile()
        spans: list[list[int]] = []
        for found in self._pattern.finditer(text):  # zero-width: every start of a secret or window, overlapping
            start, end = found.start(), found.start() + len(found.group(1))
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if not spans:
            return text
        pieces, position = [], 0
        for start, end in spans:
            pieces += [text[position:start], MASK]
            position = end
        return "".join(pieces) + text[position:]

    def _compile(self) -> re.Pattern[str]:
        """One pattern finding, at every position, a secret or a `FRAGMENT_CHARS` window of one: the windows of
        a quoted fragment overlap, so together they cover it whole."""
        alternatives = set()
        for secret in self._secrets:
            alternatives.add(secret)
            alternatives.update(secret[i : i + FRAGMENT_CHARS] for i in range(len(secret) - FRAGMENT_CHARS + 1))
        ordered = sorted(alternatives, key=len, reverse=True)  # the longest match at each position
        return re.compile("(?=(" + "|".join(re.escape(a) for a in ordered) + "))")
