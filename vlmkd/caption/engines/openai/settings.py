"""The openai engine's settings that need no HTTP stack (the CLI reads them without importing aiohttp): its
defaults and the retry policy."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields

from vlmkd.errors import InputError

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_CONCURRENCY = 64
SERVED_MODEL_CHOICES = ("require", "record")  # what to do with answers that name another model than asked for


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit GPU servers under load; tests shrink the times."""

    max_attempts: int = 10  # tries of one request through transient failures
    server_error_attempts: int = 3  # tries of one request answered 500
    rejection_attempts: int = 2  # tries of one request answered 400/422
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 300.0  # one attempt, from sending to the last byte of the answer
    connect_timeout_s: float = 10.0
    dead_after_s: float = 60.0  # a server unreachable this long is given up for the run
    refusals_in_a_row: int = 50  # final failures with no success between them: the run is misconfigured

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            integer = setting.type in ("int", int)
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise InputError(f"{setting.name} must be {'an integer' if integer else 'a number'}, got {value!r}")
            if not math.isfinite(value) or value <= 0 or (integer and value < 1):
                raise InputError(f"{setting.name} must be a finite number > 0, got {value}")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Pause before try `attempt + 1`: exponential, capped, jittered into its upper half."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return delay * (0.5 + 0.5 * rng.random())
