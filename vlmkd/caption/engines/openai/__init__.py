"""The `openai` engine: `engine` (chat requests and answers), `dispatch` (spreading requests over servers,
retries), `transport` (HTTP on aiohttp: TLS, proxies, bounded answers), `redaction` (no secret leaves) and
`settings` (defaults and the retry policy).

`OpenAIEngine` is imported on first use, so that reading the settings (as the CLI does) needs no aiohttp, and a
missing aiohttp is a one-line `MissingDependencyError` when the engine is asked for.
"""

from __future__ import annotations

from typing import Any

from vlmkd.caption.engines.openai.settings import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_CONCURRENCY,
    SERVED_MODEL_CHOICES,
    RetryPolicy,
)

__all__ = ["DEFAULT_API_KEY_ENV", "DEFAULT_CONCURRENCY", "SERVED_MODEL_CHOICES", "OpenAIEngine", "RetryPolicy"]


def __getattr__(name: str) -> Any:
    if name != "OpenAIEngine":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import aiohttp  # noqa: F401
    except ImportError as error:
        from vlmkd.errors import MissingDependencyError

        raise MissingDependencyError(
            f"--engine openai needs aiohttp ({error}), a dependency of vlmkd: pip install 'aiohttp>=3.13.3'"
        ) from None
    from vlmkd.caption.engines.openai.engine import OpenAIEngine

    return OpenAIEngine
