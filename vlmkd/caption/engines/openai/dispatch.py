"""Spread requests over several HTTP servers, at most N in flight, with retries: the requests of one image to
one server (`routing`: a stable choice per image, failing over when its server is down or saturated), other
requests to the server with the fewest in flight.

What is retried, and how (jittered exponential backoff, per request):
- transient: connections reset or dropped, timeouts, 408, 429, 502, 503, 504 (`Retry-After` honoured):
  up to `RetryPolicy.max_attempts` tries; a request still failing after that stops the run (it never
  becomes a failed image: a rerun will caption it);
- a server that cannot be reached (refused, connect timeout): the request goes to another server at once;
- 500 (and other 5xx): up to `server_error_attempts` tries, then it is that request's failure;
- 400, 413, 422 (and other 4xx): tried once more (on another server when there is one); a repeat is that
  request's failure;
- 401, 403, 404, a redirected POST, a TLS certificate not trusted: the server is unusable (bad key, no such
  route or model, a URL or CA to fix): it is given up, the others go on;
- an answer body larger than the transport's cap is treated as a 500 (it is not read further);
- a 200 whose answer the caller's `read` rejects (`Rejected`: no caption, an empty one...) is that request's
  failure at once (a model answers the same again); one that shows the server unusable (`WrongServer`: it
  serves another model) gives the server up, and the request goes to another.
A server that cannot be reached is skipped with growing pauses and given up once unreachable for
`dead_after_s`; the run stops with `ServiceError` (one line) when no server is left.

Every text this module produces (log lines, failure reasons, the final error) goes through `redact` before it
is cut to length, so no secret (API key, gateway header, proxy password) leaves the process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from yarl import URL

from vlmkd.caption.engines.openai.routing import Route, ranking, saturation
from vlmkd.caption.engines.openai.settings import RetryPolicy
from vlmkd.caption.engines.openai.transport import (
    REDIRECT_STATUSES,
    Endpoint,
    Lost,
    Response,
    TooLarge,
    Transport,
    TransportError,
    Unreachable,
    Untrusted,
)
from vlmkd.errors import ServiceError

TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
UNUSABLE_STATUSES = {401: "unauthorized", 403: "forbidden", 404: "not found"}
REASON_CHARS = 300


T = TypeVar("T")


class Rejected(Exception):
    """Raised by a `read` function: the answer is not usable (`reason`, one line); the request has failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WrongServer(Rejected):
    """Raised by a `read` function: the answer shows the server unusable (it serves another model)."""


@dataclass(frozen=True)
class Completed:
    """A successful answer: its decoded JSON body."""

    body: dict[str, Any]
    server: str


@dataclass(frozen=True)
class Refused:
    """A request the servers refused for good (4xx or repeated 500): the reason, one line."""

    reason: str


@dataclass
class Server:
    """One server's state: requests in flight, and how long it has been failing. `index`: its place in the
    dispatcher's list; `name`: its base URL as given, what routing hashes (it stays if the server moves)."""

    endpoint: Endpoint
    index: int = 0
    name: bytes = b""
    outstanding: int = 0
    sent: int = 0
    succeeded: int = 0
    dead: str | None = None  # why it was given up
    failures_in_a_row: int = 0
    failing_since: float | None = None
    suspended_until: float = 0.0
    urls: dict[str, URL] = field(default_factory=dict, repr=False)  # by path: made once, they cost CPU

    @property
    def url(self) -> str:
        return self.endpoint.url

    def join(self, path: str) -> URL:
        """The URL of `path` on this server."""
        url = self.urls.get(path)
        if url is None:
            url = self.urls[path] = self.endpoint.join(path)
        return url

    def move(self, endpoint: Endpoint) -> None:
        """The server answers at `endpoint` from now on (its discovery GET was redirected there)."""
        self.endpoint = endpoint
        self.urls.clear()


class _Transient(Exception):
    """An attempt failed in a way worth retrying; `retry_after` from the server, if it said."""

    def __init__(self, reason: str, retry_after: float | None = None, server_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.server_down = server_down


class Dispatcher:
    """Sends JSON POSTs to the least busy live server, `concurrency` at most in flight, with retries.

    Runs on one asyncio event loop (all methods must be awaited there). `log` receives one-line notices
    (a server lost or back, an image refused); `redact` scrubs secrets from every text it produces.
    """

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        transport: Transport,
        concurrency: int,
        policy: RetryPolicy,
        log: Callable[[str], None],
        redact: Callable[[str], str],
        seed: int = 0,
    ) -> None:
        if not endpoints:
            raise ValueError("no servers")
        self.servers = [Server(e, index=k, name=str(e.base).encode()) for k, e in enumerate(endpoints)]
        self.transport = transport
        self.concurrency = concurrency
        self.policy = policy
        self.log = log
        self.redact = redact
        self.rng = random.Random(seed)
        self.retries: dict[str, int] = {}  # cause -> retries, for reports and tests
        self.fatal: ServiceError | None = None
        self._refusals_in_a_row = 0
        self._rotation = itertools.count()
        self._slots: asyncio.Semaphore | None = None

    # --------------------------------------------------------------------------------------- requests
    async def get_json(self, server: Server, path: str) -> dict[str, Any]:
        """One GET outside the retry machinery (model discovery), following redirects on the server's host: a
        server moved (`http://` to `https://`) is used at its new URL from then on. `ServiceError` saying why
        when it fails."""
        try:
            response, url = await self.transport.get(server.join(path))
        except TransportError as error:
            raise ServiceError(self.redact(error.reason)) from None
        if response.status != 200:
            raise ServiceError(self.redact(f"HTTP {response.status}: {self.excerpt(response)}"))
        if url != server.join(path):
            if not url.path.endswith(path):
                raise ServiceError(self.redact(f"redirected to {url.with_query(None)}, which does not end in {path}"))
            moved = Endpoint(url.with_path(url.path.removesuffix(path)).with_query(url.query))
            self.log(self.redact(f"server {server.url} moved to {moved.url}; using that"))
            server.move(moved)
        try:
            return json.loads(response.body)
        except ValueError:
            raise ServiceError(self.redact(f"the answer is not JSON: {self.excerpt(response)}")) from None

    def route(self, key: bytes) -> Route:
        """A route for the requests of the image whose key is `key` (`routing.image_key`)."""
        return Route(ranking(key, [server.name for server in self.servers]))

    async def post(
        self,
        path: str,
        body: bytes,
        route: Route | None = None,
        read: Callable[[dict[str, Any], str], T] = Completed,  # type: ignore[assignment]
    ) -> T | Refused:
        """POST `body` to `path` until it succeeds or is refused for good: on `route`'s server when given (the
        requests of one image), else on the least busy one. `read(answer, server_url)` turns a 200's decoded
        JSON into the result, or raises `Rejected` / `WrongServer` (default: a `Completed`)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            outcome = await self._post(path, body, route, read)
        if not isinstance(outcome, Refused):
            self._refusals_in_a_row = 0
        else:
            self._refusals_in_a_row += 1
            if self._refusals_in_a_row >= self.policy.refusals_in_a_row:
                self._fail(
                    f"the servers refused {self._refusals_in_a_row} requests in a row (last: {outcome.reason}); "
                    "check --model, the decoding settings and the servers' logs"
                )
        return outcome

    async def _post(self, path: str, body: bytes, route: Route | None, read: Callable[..., T]) -> T | Refused:
        transient = server_errors = rejections = 0
        avoid: Server | None = None
        while True:
            if self.fatal is not None:
                raise self.fatal
            server = await self._choose(avoid, route)
            try:
                response = await self._attempt(server, "POST", server.join(path), body)
            except _Transient as error:
                self._count(error.reason.split(":")[0])
                if error.server_down:  # bounded by `dead_after_s`, not by this request's budget
                    self._server_failed(server, error.reason)
                    continue  # another server takes it at once, or this one once its pause is over
                transient += 1
                if transient >= self.policy.max_attempts:
                    self._fail(f"a request failed {transient} times in a row (last: {server.url}: {error.reason})")
                await self._pause(transient - 1, error.retry_after)
                avoid = server
                continue
            self._server_ok(server)
            status = response.status
            if status == 200:
                try:
                    answer = json.loads(response.body)
                except ValueError:
                    status, response = 500, Response(500, response.headers, b"200 with a body that is not JSON")
                else:
                    try:
                        result = read(answer, server.url)
                    except WrongServer as error:
                        self._give_up(server, error.reason)
                        continue
                    except Rejected as error:
                        return Refused(self.redact(error.reason))
                    if route is not None:
                        route.answered_by.add(server.index)
                    return result
            if status in REDIRECT_STATUSES:
                where = response.headers.get("location", "nowhere")
                self._give_up(
                    server,
                    f"HTTP {status}: POST redirected to {where}; POSTs are not redirected "
                    "(the request and its key would go elsewhere): use the final URL as --api-base",
                )
            elif status in TRANSIENT_STATUSES:
                transient += 1
                self._count(str(status))
                if transient >= self.policy.max_attempts:
                    self._fail(f"a request failed {transient} times in a row (last: {server.url}: HTTP {status})")
                await self._pause(transient - 1, _retry_after(response))
                avoid = server
            elif status in UNUSABLE_STATUSES:
                self._give_up(server, f"HTTP {status} {UNUSABLE_STATUSES[status]}: {self.excerpt(response)}")
            elif status >= 500:
                server_errors += 1
                self._count(str(status))
                if server_errors >= self.policy.server_error_attempts:
                    return Refused(f"HTTP {status} {server_errors} times: {self.excerpt(response)}")
                await self._pause(server_errors - 1, None)
                avoid = server
            else:
                rejections += 1
                self._count(str(status))
                if rejections >= self.policy.rejection_attempts:
                    return Refused(f"HTTP {status}: {self.excerpt(response)}")
                avoid = server

    async def _attempt(self, server: Server, method: str, url: URL, body: bytes) -> Response:
        """One try on `server`. A connection that fails before any answer (a keep-alive connection the server
        closed meanwhile) is tried once more at once: the request never reached the model."""
        server.outstanding += 1
        server.sent += 1
        try:
            for fresh in (False, True):
                try:
                    return await self.transport.request(method, url, body)
                except Lost as error:
                    if error.before_answer and not fresh:
                        continue
                    raise _Transient(error.reason) from None
                except TooLarge as error:
                    return Response(500, {}, error.reason.encode())
                except Untrusted as error:
                    self._give_up(server, error.reason)
                    raise _Transient(error.reason, server_down=True) from None
                except Unreachable as error:
                    raise _Transient(error.reason, server_down=True) from None
                except TransportError as error:  # timed out
                    raise _Transient(error.reason) from None
            raise AssertionError("unreachable")
        finally:
            server.outstanding -= 1

    # ---------------------------------------------------------------------------------------- servers
    async def _choose(self, avoid: Server | None, route: Route | None = None) -> Server:
        """The server for the next try: `route`'s (see `_routed`), else the live server with the fewest requests
        in flight (ties in turn); after a failure, preferably not `avoid`."""
        while True:
            now = time.monotonic()
            alive = [s for s in self.servers if s.dead is None]
            if not alive:
                self._fail("no server left: " + "; ".join(f"{s.url}: {s.dead}" for s in self.servers))
            ready = [s for s in alive if s.suspended_until <= now]
            if avoid is not None and len(ready) > 1:
                ready = [s for s in ready if s is not avoid] or ready
            if ready and route is not None:
                return self._routed(route, ready)
            if ready:
                turn = next(self._rotation)
                return min(ready, key=lambda s: (s.outstanding, (s.index - turn) % len(self.servers)))
            soonest = min(alive, key=lambda s: s.suspended_until)
            await asyncio.sleep(max(0.0, soonest.suspended_until - now))
            if soonest.dead is None and soonest.failing_since is not None:
                if time.monotonic() - soonest.failing_since >= self.policy.dead_after_s:
                    self._give_up(soonest, f"unreachable for {self.policy.dead_after_s:g} s")
                    continue
                if route is not None:
                    route.pinned = soonest.index
                return soonest  # probe it

    def _routed(self, route: Route, ready: list[Server]) -> Server:
        """`route`'s server among `ready`: the one it is pinned to while that one is ready; otherwise the first
        in its ranking that is not saturated (`routing.saturation`: above the mean, so the least busy never
        is), pinned from then on."""
        if route.pinned is not None and self.servers[route.pinned] in ready:
            return self.servers[route.pinned]
        limit = saturation(sum(s.outstanding for s in ready), len(ready))
        ranked = [self.servers[k] for k in route.ranking if self.servers[k] in ready]
        chosen = next(s for s in ranked if s.outstanding < limit)
        route.pinned = chosen.index
        return chosen

    def _server_failed(self, server: Server, reason: str) -> None:
        now = time.monotonic()
        if server.failing_since is None:
            server.failing_since = now
            self.log(self.redact(f"server {server.url} unreachable ({reason}); the others carry on"))
        if now - server.failing_since >= self.policy.dead_after_s:
            self._give_up(server, f"unreachable for {self.policy.dead_after_s:g} s ({reason})")
            return
        server.suspended_until = now + self.policy.backoff(server.failures_in_a_row, self.rng)
        server.failures_in_a_row += 1

    def _server_ok(self, server: Server) -> None:
        server.succeeded += 1
        if server.failing_since is not None:
            self.log(f"server {server.url} is back")
        server.failing_since = None
        server.failures_in_a_row = 0
        server.suspended_until = 0.0

    def _give_up(self, server: Server, reason: str) -> None:
        if server.dead is None:
            server.dead = self.redact(reason)
            self.log(f"giving up on server {server.url}: {server.dead}")

    def _fail(self, message: str) -> None:
        """Stop every request of the run with one `ServiceError`."""
        if self.fatal is None:
            self.fatal = ServiceError(self.redact(message))
        raise self.fatal

    async def _pause(self, attempt: int, retry_after: float | None) -> None:
        delay = self.policy.backoff(attempt, self.rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.policy.backoff_max_s))
        await asyncio.sleep(delay)

    def _count(self, cause: str) -> None:
        self.retries[cause] = self.retries.get(cause, 0) + 1

    def excerpt(self, response: Response) -> str:
        """A server's error body as one short line, secrets masked first: its JSON `message`/`detail` when
        there is one."""
        return _excerpt(self.redact(response.body.decode("utf-8", "replace")), self.redact)

    async def close(self) -> None:
        await self.transport.close()


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from inference servers; the backoff applies


def _excerpt(text: str, redact: Callable[[str], str]) -> str:
    """An error body (already redacted) as one line of at most `REASON_CHARS`: its JSON `message`/`detail`
    when there is one (redacted again: a JSON string may spell a secret with escapes)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("message") or data.get("detail")
        if message:
            text = redact(message if isinstance(message, str) else json.dumps(message))
    text = " ".join(text.split()) or "(empty body)"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."
