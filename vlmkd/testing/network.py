"""Loopback network fixtures for the openai engine's transport tests: a server that answers raw bytes in the
segments asked for, a forwarding HTTP proxy that records what passed through it, and a throwaway TLS CA.

Each server runs on a thread and event loop of its own, on 127.0.0.1 only, and is stopped by `stop()` (or as a
context manager). Nothing here is used by the library itself.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
INVALID_HOST = "vlmkd-stub.invalid"  # resolves nowhere (RFC 2606): reachable only through `ForwardProxy`
MAX_HEAD_BYTES = 64 * 1024


class LoopbackServer:
    """Base of the servers below: `handle(reader, writer)` per connection, on a loop of its own thread."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start within 10 s")
        return self

    def _run(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, HOST, 0, limit=MAX_HEAD_BYTES)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(listen())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 request with a Content-Length body (or none): (request line, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head[:-4].split(b"\r\n")
    headers = {}
    for raw in rest:
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


Segmenter = Callable[[int, bytes], Iterable[bytes]]


def whole(index: int, reply: bytes) -> list[bytes]:
    """The reply in one write."""
    return [reply]


def split_at_every_byte(index: int, reply: bytes) -> list[bytes]:
    """Request k gets its reply in two writes, split after byte k % (len - 1) + 1: over len - 1 requests,
    every split point of the reply."""
    cut = index % (len(reply) - 1) + 1
    return [reply[:cut], reply[cut:]]


class RawServer(LoopbackServer):
    """Answers request k with `replies[k % len(replies)]` (raw bytes), written in the segments `segments`
    gives, with `pause_s` between writes (TCP_NODELAY: each write leaves as its own segment); closes the
    connection after each answer when `close_after`. Counts connections and answers."""

    def __init__(self, replies: list[bytes], *, close_after: bool = False, segments: Segmenter = whole,
                 pause_s: float = 0.001) -> None:  # fmt: skip
        super().__init__()
        self.replies, self.close_after, self.segments, self.pause_s = replies, close_after, segments, pause_s
        self.answered = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            index = self.answered
            self.answered += 1
            pieces = list(self.segments(index, self.replies[index % len(self.replies)]))
            for number, piece in enumerate(pieces):
                writer.write(piece)
                await writer.drain()
                if number < len(pieces) - 1:
                    await asyncio.sleep(self.pause_s)
            if self.close_after:
                return


@dataclass(frozen=True)
class Passed:
    """A request the proxy forwarded: `method` and `target` as the client sent them (absolute-form URL, or
    host:port for a CONNECT tunnel), and its Proxy-Authorization header."""

    method: str
    target: str
    proxy_authorization: str | None


class ForwardProxy(LoopbackServer):
    """A forwarding HTTP proxy: absolute-form requests (`http://` targets) are forwarded one by one on a
    connection to the target, CONNECT opens a tunnel (`https://` targets). Every request is recorded in
    `passed`; with `credentials` ("user:password") a request without them is answered 407.

    Every target host is reached at 127.0.0.1 (its port kept): a client may name servers by hosts that resolve
    nowhere (`stub.invalid`), so that a request that did not pass through the proxy cannot connect at all."""

    def __init__(self, credentials: str | None = None) -> None:
        super().__init__()
        self.passed: list[Passed] = []
        self.expected = f"Basic {base64.b64encode(credentials.encode()).decode()}" if credentials else None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                line, headers, body = await read_request(reader)
                method, target, version = line.decode("latin-1").split(" ", 2)
                self.passed.append(Passed(method, target, headers.get("proxy-authorization")))
                if self.expected is not None and headers.get("proxy-authorization") != self.expected:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    port = target.rsplit(":", 1)[1]
                    far_reader, far_writer = await asyncio.open_connection(HOST, int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(_pipe(reader, far_writer), _pipe(far_reader, writer))
                    return
                _, _, rest = target.partition("://")
                authority, _, path = rest.partition("/")
                if upstream is None:
                    upstream = await asyncio.open_connection(HOST, int(authority.partition(":")[2] or 80))
                lines = [f"{method} /{path} {version}"]
                lines += [f"{name}: {value}" for name, value in headers.items() if not name.startswith("proxy-")]
                upstream[1].write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                await upstream[1].drain()
                status_head = await upstream[0].readuntil(b"\r\n\r\n")
                length = next((int(h.split(b":")[1]) for h in status_head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)  # fmt: skip
                writer.write(status_head + await upstream[0].readexactly(length))
                await writer.drain()
        finally:
            if upstream is not None:
                upstream[1].transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.transport.abort()


@dataclass(frozen=True)
class LoopbackCA:
    """A throwaway CA (`ca`: its certificate, PEM) and a server certificate it signed for 127.0.0.1."""

    ca: Path
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, self.key)
        return context


def make_test_ca(folder: Path) -> LoopbackCA:
    """A CA and a server certificate for IP 127.0.0.1 and the host `INVALID_HOST`, made by the `openssl`
    command (EC keys, valid 2 days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make a test CA")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vlmkd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "server.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:{INVALID_HOST}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    return LoopbackCA(folder / "ca.pem", folder / "server.pem", folder / "server.key")
