"""The openai engine's HTTP transport, on aiohttp: keep-alive connections, TLS with the system's or a given CA
bundle, proxies from the environment, gateway headers, gzip, and answers read up to a size cap.

Why aiohttp: it reads HTTP/1.1 as the standard frames it (Content-Length, chunked, close-delimited, gzip and
deflate, whatever segments the bytes arrive in) and does proxies and TLS the way users' networks need, for
~1.5x the client CPU per request of a hand-written asyncio client (benchmarks/bench_openai_captioning.py).

What aiohttp would do per request that costs CPU and does not change (the environment's proxy for a server,
netrc) is settled once per server here. Redirects are never followed by aiohttp itself: `get` follows them on
the same host (the discovery GET: `http://` moved to `https://`), and a redirected POST comes back as an
answer the dispatcher refuses, so that neither a request body nor a key goes anywhere the user did not name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from vlmkd.caption.engines.openai.redaction import looks_secret
from vlmkd.errors import InputError

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a chat completion of one caption is a few KB; 1 MiB leaves room for slack
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Headers the transport owns: a `--header` may not replace them.
RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class Endpoint:
    """Where a server lives: its base URL (scheme, host, port, path prefix such as `/v1`, query kept)."""

    base: URL

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`http[s]://host[:port][/prefix][?query]`; `InputError` for anything else. Credentials in URLs are
        refused: they would end up in logs (pass the key through `--api-key-env`)."""
        try:
            url = URL(text)
            port = url.port
        except ValueError:
            raise InputError(f"--api-base is not a URL: {text!r}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise InputError(f"--api-base must be an http:// or https:// URL with a host, got {text!r}")
        if url.user or url.password:
            raise InputError("--api-base must not contain credentials; put the API key in the --api-key-env variable")
        if url.fragment or port is None:
            raise InputError(f"--api-base must not have a fragment, got {text!r}")
        return cls(url.with_path(url.path.rstrip("/")).with_query(url.query))  # with_path drops the query

    def join(self, path: str) -> URL:
        """The URL of `path` (e.g. `/chat/completions`) under this endpoint, with its query."""
        return self.base.with_path(self.base.path.rstrip("/") + path).with_query(self.base.query)

    @property
    def url(self) -> str:
        """The base URL as messages show it: secret-looking query values masked."""
        query = {name: ("***" if looks_secret(name) else value) for name, value in self.base.query.items()}
        return str(self.base.with_query(query) if query else self.base)

    def secrets(self) -> list[str]:
        """Query values that look secret (`?key=...`), for the redactor."""
        return [value for name, value in self.base.query.items() if looks_secret(name) and value]


@dataclass(frozen=True)
class Response:
    """A complete answer: status, headers (case-insensitive names) and body (decompressed, at most the cap)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """An exchange that produced no usable answer; `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreachable(TransportError):
    """No connection could be made (refused, connect timeout, DNS, the proxy down): the server is down."""


class Lost(TransportError):
    """The connection failed during the exchange. `before_answer`: nothing of the answer had arrived (a
    keep-alive connection the server had closed fails so; sending again at once is safe)."""

    def __init__(self, reason: str, before_answer: bool = False) -> None:
        super().__init__(reason)
        self.before_answer = before_answer


class TimedOut(TransportError):
    """No complete answer within the request timeout."""


class Untrusted(TransportError):
    """TLS failed (certificate not trusted, wrong host name, handshake): a setting to fix, not a passing fault."""


class TooLarge(TransportError):
    """The answer's body is larger than the cap; it was not read further."""


def ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """Verification against `ca_bundle` (a PEM file of CA certificates) when given, else the system's CAs
    (which honour `SSL_CERT_FILE` / `SSL_CERT_DIR`)."""
    if ca_bundle is None:
        return ssl.create_default_context()
    path = Path(ca_bundle)
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: --ca-bundle file not found") from None
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or type(error).__name__
        raise InputError(f"{path}: not a PEM bundle of CA certificates ({reason})") from None


def proxy_for(url: URL) -> URL | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY` / `HTTP_PROXY`, upper or lower case, as
    `urllib` reads them), unless `NO_PROXY` exempts its host or the host is this machine (a proxy cannot reach
    a server on this machine's loopback; Go's HTTP client skips it too)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme)
    if not proxy or _is_loopback(url.host or "") or urllib.request.proxy_bypass(url.host or ""):
        return None
    try:
        parsed = URL(proxy if "://" in proxy else f"http://{proxy}")
    except ValueError:
        raise InputError(f"{url.scheme.upper()}_PROXY is not a URL: {proxy!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(f"{url.scheme.upper()}_PROXY must be an http:// proxy URL, got {parsed.with_password(None)}")
    return parsed


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def header_pairs(headers: Mapping[str, str]) -> dict[str, str]:
    """Gateway headers checked: names are HTTP tokens, values one line, none the transport sets itself."""
    checked = {}
    for name, value in headers.items():
        if not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
            raise InputError(f"--header name {name!r} is not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise InputError(f"--header {name} cannot be set: vlmkd sets it for each request")
        if any(c in value for c in "\r\n\0"):
            raise InputError(f"--header {name}: the value must be one line")
        checked[name] = value
    return checked


def new_event_loop(use_uvloop: bool | None) -> tuple[asyncio.AbstractEventLoop, str]:
    """An event loop and its name: uvloop's when it is installed (about a third less CPU per request) unless
    `use_uvloop` is False; `True` requires it."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise InputError("uvloop was asked for but is not installed: pip install uvloop") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class Transport:
    """One aiohttp session for every server of an engine; `request` sends one request and reads its answer.

    Must be used on one event loop; the session is made there on first use. `headers` go with every request.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext,
        request_timeout_s: float,
        connect_timeout_s: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.headers = dict(headers)
        self.ssl_context = ssl_context
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str | None, int | None], URL | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ssl_context, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(  # no cookies: a server's Set-Cookie changes nothing we send
            connector=connector,
            headers=self.headers,
            timeout=self.timeout,
            trust_env=False,
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    def proxy(self, url: URL) -> URL | None:
        key = (url.scheme, url.host, url.port)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url)
        return self._proxies[key]

    async def request(self, method: str, url: URL, body: bytes | None = None) -> Response:
        """Send one request (redirects not followed) and read its whole answer; a `TransportError` subclass
        saying why when there is none."""
        session = self._session or self._open()
        answered = False
        try:
            async with session.request(
                method, url, data=body, allow_redirects=False, proxy=self.proxy(url)
            ) as response:
                answered = True
                data = await self._read(response)
                return Response(response.status, response.headers, data)
        except TransportError:
            raise
        except aiohttp.ClientConnectorCertificateError as error:
            raise Untrusted(_certificate_reason(error)) from None
        except aiohttp.ClientSSLError as error:
            raise Untrusted(f"TLS with {error.host}:{error.port} failed ({_os_reason(error.os_error)})") from None
        except aiohttp.ClientProxyConnectionError as error:
            raise Unreachable(f"cannot connect to the proxy {error.host}:{error.port}: "
                              f"{_os_reason(error.os_error)}") from None  # fmt: skip
        except aiohttp.ClientConnectorError as error:
            raise Unreachable(f"cannot connect: {_os_reason(error.os_error)}") from None
        except aiohttp.ConnectionTimeoutError:
            raise Unreachable("connect timeout") from None
        except aiohttp.ClientHttpProxyError as error:  # the proxy refused the tunnel (CONNECT)
            raise Unreachable(f"the proxy refused the connection: HTTP {error.status} {error.message}") from None
        except asyncio.TimeoutError:
            raise TimedOut(f"timeout: no complete answer in {self.request_timeout_s:g} s") from None
        except aiohttp.ServerDisconnectedError:
            raise Lost("connection lost: the server closed it", before_answer=not answered) from None
        except aiohttp.ClientPayloadError as error:
            raise Lost(f"connection lost: incomplete answer ({_one_line(error)})") from None
        except aiohttp.ClientResponseError as error:  # not HTTP (a malformed status line or headers)
            raise Lost(f"connection lost: malformed answer ({error.message})") from None
        except (aiohttp.ClientError, OSError) as error:
            reset = isinstance(error, ConnectionResetError | BrokenPipeError) or getattr(error, "errno", None) in (
                104, 32)  # fmt: skip
            raise Lost(f"connection lost: {_one_line(error)}", before_answer=reset and not answered) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, decompressed, or `TooLarge` as soon as it passes the cap (the connection is then dropped)."""
        limit, headers = self.max_body_bytes, response.headers
        length = response.content_length if "content-length" in headers else None
        if length is not None and length > limit:
            raise TooLarge(f"answer body of {length} bytes is larger than the {limit}-byte cap")
        if length is not None and "content-encoding" not in headers:
            return await response.read()  # framed and within the cap
        parts, total = [], 0
        while chunk := await response.content.readany():
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"answer body larger than the {limit}-byte cap")
            parts.append(chunk)
        return b"".join(parts)

    async def get(self, url: URL) -> tuple[Response, URL]:
        """GET `url`, following redirects that stay on its host (e.g. `http://` to `https://`); the answer and
        the URL that gave it. A redirect to another host is refused (`Unreachable`): the headers (the key)
        would go with it."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.request("GET", url)
            if response.status not in REDIRECT_STATUSES or "location" not in response.headers:
                return response, url
            target = url.join(URL(response.headers["location"]))
            if target.host != url.host or target.scheme not in ("http", "https"):
                raise Unreachable(
                    f"redirected to another host ({target.with_query(None)}); not followed, so that "
                    "the API key is not sent there: use that URL as --api-base if you trust it"
                )
            url = target
        raise Unreachable(f"more than {MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _certificate_reason(error: Any) -> str:
    detail = getattr(error.certificate_error, "verify_message", None) or _one_line(error.certificate_error)
    return (f"TLS certificate of {error.host}:{error.port} not trusted ({detail}); pass the CA that signed it with "
            "--ca-bundle FILE (or SSL_CERT_FILE)")  # fmt: skip


def _os_reason(error: BaseException | None) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, ssl.SSLError):
        return error.reason or _one_line(error)
    return _one_line(error) if error is not None else "unknown error"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
