"""Which server captions an image: all of an image's prompts go to one server, so that the server's prefix
cache (vLLM's automatic prefix caching, SGLang's radix cache, TensorRT-LLM's KV-cache block reuse) computes the
image's prefill once and reuses it for the image's other prompts.

Each image gets a stable ranking of the servers (rendezvous hashing of the image's key, its file path, with
each server's base URL), so the same image goes to the same server in every run, and only the images of a
server that goes away move elsewhere. An image is pinned to the first server in its ranking that is live,
ready and not saturated (fewer requests in flight than its share of the concurrency); when that server goes
down or pauses after a failure, the image moves to the next one and stays there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def image_key(identity: bytes) -> bytes:
    """An image's routing key from what identifies it (its file path, else its bytes)."""
    return hashlib.blake2b(identity, digest_size=16).digest()


def ranking(key: bytes, names: Sequence[bytes]) -> tuple[int, ...]:
    """The servers named `names` in the order of preference of the image whose key is `key` (`image_key`):
    highest `hash(key, name)` first."""
    scores = [hashlib.blake2b(name, key=key, digest_size=8).digest() for name in names]
    return tuple(sorted(range(len(names)), key=scores.__getitem__, reverse=True))


@dataclass
class Route:
    """Where one image's requests go: the servers in its order of preference (indices), the one it is pinned
    to, and the servers that answered its requests (how many servers the image touched)."""

    ranking: tuple[int, ...]
    pinned: int | None = None
    answered_by: set[int] = field(default_factory=set)

    @property
    def on_first_choice(self) -> bool:
        """Whether the image stayed on the first server of its ranking (its stable assignment)."""
        return self.answered_by == {self.ranking[0]}


LOAD_SLACK = 0.25


def saturation(in_flight: int, servers: int) -> int:
    """Requests in flight from which a server counts as saturated, when `in_flight` requests are spread over
    `servers`: `(1 + LOAD_SLACK)` times the mean with one more request, rounded up (at least 1)."""
    return max(1, math.ceil((1 + LOAD_SLACK) * (in_flight + 1) / max(servers, 1)))
