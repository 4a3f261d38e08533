"""A minimal asyncio HTTP/1.1 client: keep-alive connections, Content-Length, chunked and close-delimited bodies.

Why not httpx or the openai client: against an instant stub server on a 2-core machine, the openai async client
sustained ~150 requests/s (~2 ms of client CPU each) and httpx ~900/s (~0.9 ms), while these ~150 lines sustain
several thousand at ~0.1 ms (benchmarks/bench_openai_captioning.py). One client process must feed a fleet of
GPU servers at ~100 captions/s each, so the client's own CPU per request is what limits the fleet's size.

Plain `http://` and `https://` (TLS via `ssl`); no proxies, no redirects, no HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from vlmkd.errors import InputError

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


class ProtocolError(ConnectionError):
    """The server's answer is not valid HTTP/1.1 or the connection closed before it was complete."""


@dataclass(frozen=True)
class Endpoint:
    """Where a server lives: scheme, host, port and the path prefix requests go under (e.g. `/v1`)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http[s]://host[:port][/prefix]`; `InputError` for anything else. Credentials in URLs are refused:
        they would end up in logs (pass the key through `--api-key-env`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--api-base must be an http:// or https:// URL with a host, got {url!r}")
        if parts.username or parts.password:
            raise InputError("--api-base must not contain credentials; put the API key in the --api-key-env variable")
        if parts.query or parts.fragment:
            raise InputError(f"--api-base must not have a query or fragment, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InputError(f"--api-base has a bad port: {url!r}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class Connection:
    """One open connection to an endpoint; `request` sends one request and reads its whole answer."""

    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.requests_sent = 0

    @classmethod
    async def open(cls, endpoint: Endpoint, ssl_context: ssl.SSLContext | None = None) -> Connection:
        context = (ssl_context or ssl.create_default_context()) if endpoint.scheme == "https" else None
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=context, limit=MAX_HEAD_BYTES)
        return cls(endpoint, reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Response:
        """Send `method path` (under the endpoint's prefix) and read the answer. Raises `ProtocolError` or an
        `OSError` when the connection fails; the connection is then not reusable."""
        self.reusable = False  # until the answer has been read completely
        self.requests_sent += 1
        lines = [f"{method} {self.endpoint.prefix}{path} HTTP/1.1", f"host: {self.endpoint.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"content-length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        status, response_headers, keep_alive = await self._read_head()
        data = await self._read_body(method, status, response_headers)
        framed = "content-length" in response_headers or "transfer-encoding" in response_headers
        self.reusable = keep_alive and framed  # a close-delimited body used the connection up
        return Response(status, response_headers, data)

    async def _read_head(self) -> tuple[int, dict[str, str], bool]:
        while True:
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as error:
                raise ProtocolError("connection closed before the response headers were complete") from error
            except asyncio.LimitOverrunError as error:
                raise ProtocolError(f"response headers longer than {MAX_HEAD_BYTES} bytes") from error
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
                continue
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" if parts[0] == "HTTP/1.1" else connection == "keep-alive"
            return status, headers, keep_alive

    async def _read_body(self, method: str, status: int, headers: dict[str, str]) -> bytes:
        try:
            if method == "HEAD" or status in (204, 304):
                return b""
            if headers.get("transfer-encoding", "").lower() == "chunked":
                return await self._read_chunked()
            if "content-length" in headers:
                length = int(headers["content-length"])
                if not 0 <= length <= MAX_BODY_BYTES:
                    raise ProtocolError(f"bad content-length {length}")
                return await self.reader.readexactly(length)
            return await self.reader.read(MAX_BODY_BYTES)  # delimited by the connection's close
        except asyncio.IncompleteReadError as error:
            raise ProtocolError(f"connection closed after {len(error.partial)} bytes of the response body") from error
        except ValueError as error:  # a non-numeric length
            raise ProtocolError(f"malformed response framing ({error})") from error

    async def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ProtocolError(f"response body longer than {MAX_BODY_BYTES} bytes")
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.reusable = False
        self.writer.transport.abort()
