"""A loopback OpenAI-compatible chat-completions server that answers instantly, or with the faults asked for.

Real servers (trtllm-serve, vLLM, `transformers serve`) will not produce 429/503 bursts, hung responses or a
connection dropped mid-body on demand; this stub does, for vlmkd's tests and its captioning benchmark, and it
can stand in for a fleet when trying out `vlmkd-caption --engine openai` without GPUs:

    python -m vlmkd.testing.openai_stub --port 8001 --port 8002    # two instant servers on 127.0.0.1

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies, gzip'd answers when asked to) for
`GET /v1/models`, `GET /health` and `POST /v1/chat/completions`, over TLS when given a context, or redirects
everything elsewhere. Its caption names what it was sent: the SHA-256 of the image bytes inside the
data URL and the prompt text (see `echo_caption`), so a test can check every caption against its image file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import json
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """Answer with a chat completion whose message content is `text`."""

    text: str


@dataclass(frozen=True)
class Error:
    """Answer with HTTP `status` and `body` (JSON when it is a dict, else plain text)."""

    status: int
    body: Any = "error"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Delay:
    """Wait `seconds`, then take `then`."""

    seconds: float
    then: Action


@dataclass(frozen=True)
class Hang:
    """Never answer (the connection stays open until the client gives up)."""


@dataclass(frozen=True)
class Drop:
    """Send the headers and half of a reply's body, then close the connection."""

    text: str = "dropped"


Action = Reply | Error | Delay | Hang | Drop
Handler = Callable[[dict[str, Any], "StubServer"], Action | Awaitable[Action]]


def request_image_bytes(payload: dict[str, Any]) -> bytes:
    """The bytes of the (first) image a chat request carries as a base64 data URL."""
    for message in payload.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                return base64.b64decode(url.split(",", 1)[1])
    raise ValueError("request has no image_url part")


def request_prompt(payload: dict[str, Any]) -> str:
    """The text part of a chat request's user message."""
    for message in payload.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "text":
                return part["text"]
    raise ValueError("request has no text part")


def echo_caption(image: bytes, prompt: str) -> str:
    """The stub's caption for an image's bytes and a prompt: their identity, checkable by a test."""
    return f"image {hashlib.sha256(image).hexdigest()[:16]} prompt {prompt}"


def echo(payload: dict[str, Any], server: StubServer) -> Action:
    """The default handler: answer at once with `echo_caption`."""
    return Reply(echo_caption(request_image_bytes(payload), request_prompt(payload)))


@dataclass
class StubServer:
    """One stub server on 127.0.0.1 (`port=0`: a free one), serving `model`, run by `handler` per chat request.

    `start()` runs it on its own thread and event loop; `stop()` closes the listener and every open
    connection (a killed server: the clients then see refused and reset connections).
    """

    handler: Handler = echo
    model: str = "stub-model"
    port: int = 0
    api_key: str | None = None  # when set, requests without `authorization: Bearer KEY` get a 401
    instant_text: str | None = None  # when set, every chat request gets this caption, its body left unparsed
    requests: list[dict[str, Any]] = field(default_factory=list)  # every chat payload received, in order
    keep_payloads: bool = False
    headers_seen: list[dict[str, str]] = field(default_factory=list)  # each chat request's headers (keep_payloads)
    queries: list[str] = field(default_factory=list)  # every request's query string (keep_payloads)
    tls: ssl.SSLContext | None = None  # serve https:// with this context
    gzip: bool = False  # gzip every answer whose request accepts it
    redirect_to: str | None = None  # answer every request 307 to this base URL + the path after /v1
    answers_as: str | None = None  # the model name chat answers give (default: `model`, the one it lists)
    chat_requests: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _compressing: set[asyncio.StreamWriter] = field(default_factory=set)  # connections whose answers are gzip'd
    _instant_reply: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}/v1"

    def start(self) -> StubServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"openai-stub-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stub server did not start within 10 s")
        return self

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.serve())
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def serve(self) -> None:
        """Start listening on the current event loop (for callers that run their own loop)."""
        self._instant_reply = _completion(self.answers_as or self.model, self.instant_text or "")
        self._server = await asyncio.start_server(self._connection, HOST, self.port, backlog=1024, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and all connections, and end the server's thread."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:  # handlers still delaying or hanging
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                path, _, query = target.partition("?")
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.gzip and "gzip" in headers.get("accept-encoding", ""):
                    self._compressing.add(writer)
                given = headers.get("authorization")
                if self.redirect_to is not None:
                    where = self.redirect_to.rstrip("/") + path.split("/v1", 1)[-1]
                    await self._send(writer, 307, "moved", (("location", where),))
                    continue
                if self.api_key is not None and given != f"Bearer {self.api_key}":
                    # echo what was sent, as careless servers do: clients must scrub it from their messages
                    await self._send(writer, 401, {"error": {"message": f"invalid authorization {given!r}"}})
                    continue
                if self.keep_payloads:
                    with self._lock:
                        self.queries.append(query)
                        if method == "POST":
                            self.headers_seen.append(headers)
                if not await self._respond(method, path, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            return  # the client went away, or the server is stopping
        finally:
            self._writers.discard(writer)
            self._compressing.discard(writer)
            writer.transport.abort()

    async def _respond(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vlmkd-stub"}]}
            return await self._send(writer, 200, data)
        if method == "GET" and path.endswith("/health"):
            return await self._send(writer, 200, "ok")
        if method != "POST" or not path.endswith("/chat/completions"):
            return await self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        if self.instant_text is not None:  # the cheapest answer: benchmarks measure the client, not the stub
            self.chat_requests += 1
            return await self._send(writer, 200, self._instant_reply)
        try:
            payload = json.loads(body)
        except ValueError:
            return await self._send(writer, 400, {"error": {"message": "body is not JSON"}})
        with self._lock:
            self.chat_requests += 1
            if self.keep_payloads:
                self.requests.append(payload)
        action = self.handler(payload, self)
        if asyncio.iscoroutine(action):
            action = await action
        return await self._act(action, payload, writer)

    async def _act(self, action: Action, payload: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        while isinstance(action, Delay):
            await asyncio.sleep(action.seconds)
            action = action.then
        if isinstance(action, Hang):
            await asyncio.Event().wait()  # until the connection is aborted
        if isinstance(action, Error):
            return await self._send(writer, action.status, action.body, action.headers)
        completion = _completion(self.answers_as or self.model, action.text)
        if isinstance(action, Drop):
            body = json.dumps(completion).encode()
            writer.write(_head(200, "application/json", len(body)) + body[: len(body) // 2])
            await writer.drain()
            return False
        return await self._send(writer, 200, completion)

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: Any, extra: tuple[tuple[str, str], ...] = ()
    ) -> bool:
        if isinstance(body, (dict, list)):
            data, content_type = json.dumps(body).encode(), "application/json"
        elif isinstance(body, bytes):
            data, content_type = body, "application/json"
        else:
            data, content_type = str(body).encode(), "text/plain"
        if writer in self._compressing:
            data, extra = gzip.compress(data, compresslevel=1), (*extra, ("content-encoding", "gzip"))
        writer.write(_head(status, content_type, len(data), extra) + data)
        await writer.drain()
        return True


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


def _head(status: int, content_type: str, length: int, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} STUB", f"content-type: {content_type}", f"content-length: {length}"]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m vlmkd.testing.openai_stub --port P [--port P2 ...]`: instant echo servers until killed."""
    parser = argparse.ArgumentParser(prog="python -m vlmkd.testing.openai_stub", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, action="append", default=None, help="port to serve (repeatable; 0: free)")
    parser.add_argument("--model", default="stub-model", help="the model name GET /v1/models reports")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chat answer (default 0)")
    parser.add_argument(
        "--instant", metavar="TEXT", default=None, help="answer every chat request with TEXT, its JSON left unread"
    )
    args = parser.parse_args(argv)

    def handler(payload: dict[str, Any], server: StubServer) -> Action:
        reply = echo(payload, server)
        return Delay(args.delay, reply) if args.delay > 0 else reply

    async def serve_all() -> None:
        ports = args.port or [0]
        servers = [StubServer(handler, model=args.model, port=port, instant_text=args.instant) for port in ports]
        for server in servers:
            await server.serve()
            print(server.url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve_all())


if __name__ == "__main__":
    main()
