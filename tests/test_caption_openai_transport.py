"""The openai engine's transport (aiohttp) against loopback servers: HTTPS with a private CA, an HTTP proxy the
requests must pass through, redirects, gzip, gateway headers and query strings, and HTTP/1.1 answers however
their bytes are split into segments."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import subprocess
import sys

import pytest
from _openai_cases import (
    FAST,
    caption,
    captions_of,
    completion_bytes,
    expected_rows,
    post_all,
    store_rows,
    stub_fleet,
)

import vlmkd
from vlmkd.caption import GenerationSettings
from vlmkd.caption.engines.openai.engine import OpenAIEngine
from vlmkd.errors import InputError, ServiceError
from vlmkd.testing.network import INVALID_HOST, ForwardProxy, RawServer, make_test_ca, split_at_every_byte
from vlmkd.testing.openai_stub import Error

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture
def servers():
    with stub_fleet() as make:
        yield make


@pytest.fixture
def no_proxy_settings(monkeypatch):
    """No proxy variables from the machine running the tests; the test sets its own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("ca"))


def caption_with(dataset, out, urls, **options):
    """`vlmkd.caption` through the openai engine with `engine_options` given in full (fast retries, quiet)."""
    options = {"api_bases": urls, "concurrency": 8, "policy": FAST, "log": lambda message: None, **options}
    return vlmkd.caption(dataset=dataset, out=out, engine="openai", progress=False, max_new_tokens=8,
                         engine_options=options)  # fmt: skip


# ------------------------------------------------------------------------------------------------ TLS


def test_https_with_a_private_ca_is_refused_in_one_line_without_it_and_captions_with_it(
    tiny_dataset, tmp_path, servers, test_ca, monkeypatch
):
    (server,) = servers(1, tls=test_ca.server_context())
    assert server.url.startswith("https://")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ServiceError) as caught:
        caption_with(tiny_dataset, tmp_path / "refused", [server.url])
    message = str(caught.value)
    assert "\n" not in message and "not trusted" in message and "--ca-bundle" in message, message
    assert not (tmp_path / "refused").exists()

    store = caption_with(tiny_dataset, tmp_path / "bundle", [server.url], ca_bundle=str(test_ca.ca)).store
    assert store_rows(store) == expected_rows(tiny_dataset)

    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca))  # the standard variable works as well
    assert store_rows(caption_with(tiny_dataset, tmp_path / "env", [server.url]).store) == expected_rows(tiny_dataset)


def test_a_missing_or_bad_ca_bundle_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing\.pem: --ca-bundle file not found"):
        OpenAIEngine(
            None, GenerationSettings(), api_bases=["https://127.0.0.1:1/v1"], ca_bundle=tmp_path / "missing.pem"
        )
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(InputError, match=r"bad\.pem: not a PEM bundle of CA certificates"):
        OpenAIEngine(None, GenerationSettings(), api_bases=["https://127.0.0.1:1/v1"], ca_bundle=tmp_path / "bad.pem")


# ---------------------------------------------------------------------------------------------- proxy


def test_requests_pass_through_the_proxy_the_environment_names(tiny_dataset, tmp_path, servers, no_proxy_settings):
    """The servers are named by a host that resolves nowhere: only a request that went through the proxy (which
    reaches every host at 127.0.0.1) can be answered."""
    (server,) = servers(1)
    url = f"http://{INVALID_HOST}:{server.port}/v1"
    with ForwardProxy(credentials="user:pa55word") as proxy:
        no_proxy_settings.setenv("HTTP_PROXY", f"http://user:pa55word@127.0.0.1:{proxy.port}")
        store = caption_with(tiny_dataset, tmp_path / "s", [url]).store
        assert store_rows(store) == expected_rows(tiny_dataset)
        posts = [p for p in proxy.passed if p.method == "POST"]
        assert len(posts) == server.chat_requests == len(tiny_dataset) * 5
        assert {p.target for p in posts} == {f"{url}/chat/completions"}
        assert [p.target for p in proxy.passed if p.method == "GET"] == [f"{url}/models"]
        assert {p.proxy_authorization for p in proxy.passed} == {proxy.expected}

        no_proxy_settings.setenv("NO_PROXY", INVALID_HOST)  # exempt: straight to a host that does not exist
        passed = len(proxy.passed)
        with pytest.raises(ServiceError, match="no server answered GET /models .*cannot connect"):
            caption_with(tiny_dataset, tmp_path / "t", [url])
        assert len(proxy.passed) == passed


def test_https_servers_are_reached_through_a_proxy_tunnel(tiny_dataset, tmp_path, servers, test_ca, no_proxy_settings):
    (server,) = servers(1, tls=test_ca.server_context())
    url = f"https://{INVALID_HOST}:{server.port}/v1"
    with ForwardProxy() as proxy:
        no_proxy_settings.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        store = caption_with(tiny_dataset, tmp_path / "s", [url], ca_bundle=str(test_ca.ca)).store
        assert store_rows(store) == expected_rows(tiny_dataset)
        assert proxy.passed and {(p.method, p.target) for p in proxy.passed} == {
            ("CONNECT", f"{INVALID_HOST}:{server.port}")
        }


def test_servers_on_this_machine_are_never_sent_to_a_proxy(tiny_dataset, tmp_path, servers, no_proxy_settings):
    (server,) = servers(1)
    with ForwardProxy() as proxy:
        no_proxy_settings.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{server.port}/v1"
            assert store_rows(caption_with(tiny_dataset, tmp_path / host, [url]).store) == expected_rows(tiny_dataset)
        assert proxy.passed == []


# ------------------------------------------------------------------------------------------ redirects


def test_a_redirecting_base_url_is_followed_for_discovery_and_then_used_directly(tiny_dataset, tmp_path, servers):
    (target,) = servers(1, keep_payloads=True)
    (moved,) = servers(1, redirect_to=target.url)
    logs: list[str] = []
    store = caption_with(tiny_dataset, tmp_path / "s", [moved.url], log=logs.append).store
    assert store_rows(store) == expected_rows(tiny_dataset)
    assert target.chat_requests == len(tiny_dataset) * 5 and moved.chat_requests == 0
    assert any(f"server {moved.url} moved to {target.url}" in line for line in logs), logs


def test_a_redirected_post_is_refused_in_one_line(tiny_dataset, tmp_path, servers):
    (server,) = servers(1, lambda payload, s: Error(307, "moved", (("location", "http://127.0.0.1:1/v1/x"),)))
    with pytest.raises(ServiceError) as caught:
        caption_with(tiny_dataset, tmp_path / "s", [server.url])
    message = str(caught.value)
    assert "\n" not in message and "POST redirected to http://127.0.0.1:1/v1/x" in message, message
    assert "POSTs are not redirected" in message and server.chat_requests <= 8  # those in flight at once


def test_a_redirect_to_another_host_is_not_followed(tiny_dataset, tmp_path, servers):
    (target,) = servers(1)
    (moved,) = servers(1, redirect_to=target.url.replace("127.0.0.1", "localhost"))
    with pytest.raises(ServiceError, match="redirected to another host .*not followed, so that the API key"):
        caption_with(tiny_dataset, tmp_path / "s", [moved.url])


# ------------------------------------------------------------------------------- headers, query, gzip


def test_gzip_answers_gateway_headers_user_agent_and_query_strings(tiny_dataset, tmp_path, servers, monkeypatch):
    (server,) = servers(1, keep_payloads=True, gzip=True)
    monkeypatch.setenv("VLMKD_TEST_KEY", "sk-bearer-secret-0123456789")
    url = server.url + "?api-version=2024-10-21"
    store = caption_with(tiny_dataset, tmp_path / "s", [url], api_key_env="VLMKD_TEST_KEY",
                         headers={"api-key": "gateway-secret-abcdef", "X-Route": "blue"}).store  # fmt: skip
    assert store_rows(store) == expected_rows(tiny_dataset)
    assert server.queries and set(server.queries) == {"api-version=2024-10-21"}  # GET /models and every POST
    for headers in server.headers_seen:
        assert headers["user-agent"] == f"vlmkd/{vlmkd.__version__}"
        assert headers["api-key"] == "gateway-secret-abcdef" and headers["x-route"] == "blue"
        assert headers["authorization"] == "Bearer sk-bearer-secret-0123456789"
        assert "gzip" in headers["accept-encoding"]  # and the stub compressed every answer it was asked to


@pytest.mark.parametrize(
    ("headers", "message"),
    [({"bad name": "x"}, "not a valid HTTP header name"), ({"Content-Length": "3"}, "cannot be set"),
     ({"x-a": "one\r\nx-b: two"}, "must be one line")],
)  # fmt: skip
def test_bad_gateway_headers_are_input_errors(headers, message):
    with pytest.raises(InputError, match=message):
        OpenAIEngine(None, GenerationSettings(), api_bases=["http://127.0.0.1:1/v1"], headers=headers)


def test_uvloop_is_used_when_installed_unless_turned_off(tiny_dataset, tmp_path, servers):
    pytest.importorskip("uvloop")
    (server,) = servers(1)
    engines = [OpenAIEngine(None, GenerationSettings(), api_bases=[server.url], uvloop=choice, log=lambda m: None)
               for choice in (None, False)]  # fmt: skip
    try:
        assert [engine.event_loop for engine in engines] == ["uvloop", "asyncio"]
    finally:
        for engine in engines:
            engine.close()


# -------------------------------------------------------------------------------------- HTTP framing


def _content_length(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def _chunked(body: bytes, sizes: list[int], extra: bytes = b"") -> bytes:
    out, start = [b"HTTP/1.1 200 OK\r\n" + extra + b"transfer-encoding: chunked\r\n\r\n"], 0
    for number, size in enumerate(sizes):
        piece = body[start : start + size]
        start += size
        out.append(b"%x%s\r\n" % (len(piece), b";ext=1" if number == 1 else b"") + piece + b"\r\n")
    out.append(b"%x\r\n" % len(body[start:]) + body[start:] + b"\r\n0\r\nx-trailer: 1\r\n\r\n")
    return b"".join(out)


FRAMINGS = {
    "content-length": lambda body: _content_length(body),
    "chunked": lambda body: _chunked(body, [7, 1, 20]),
    "gzip": lambda body: _content_length(gzip.compress(body), b"content-encoding: gzip\r\n"),
    "gzip, chunked": lambda body: _chunked(gzip.compress(body), [3, 11], b"content-encoding: gzip\r\n"),
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_answers_split_at_every_byte_are_read_as_http_frames_them(framing):
    """Answer k arrives as two segments split after byte k: over len - 1 requests, every split point."""
    text = "a caption split at every byte"
    reply = FRAMINGS[framing](completion_bytes(text))
    with RawServer([reply], segments=split_at_every_byte, pause_s=0.0005) as server:
        outcomes = post_all(f"http://127.0.0.1:{server.port}/v1", len(reply) - 1)
        assert captions_of(outcomes) == [text] * (len(reply) - 1)
        assert server.answered == len(reply) - 1 and server.connections == 1  # one keep-alive connection


def test_close_delimited_answers_in_random_segments():
    rng = random.Random(0)
    text = "until the connection closes " * 40

    def random_segments(index, reply):
        cuts = sorted(rng.sample(range(1, len(reply)), 30))
        return [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)], strict=True)]

    reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + completion_bytes(text)
    with RawServer([reply], close_after=True, segments=random_segments, pause_s=0.0002) as server:
        assert captions_of(post_all(f"http://127.0.0.1:{server.port}/v1", 20)) == [text] * 20
        assert server.connections == 20


def test_a_body_larger_than_the_cap_is_not_read_whole(tiny_dataset, tmp_path, servers):
    """50 MB per caption: the engine stops reading at its cap (1 MiB by default), keeps nothing of it, and the
    run stops once the servers have refused requests for it in a row."""
    huge = json.dumps({"choices": [{"message": {"content": "x" * (50 << 20)}}]}).encode()
    (server,) = servers(1, lambda payload, s: Error(200, huge))
    policy = dataclasses.replace(FAST, refusals_in_a_row=2, request_timeout_s=20.0)
    with pytest.raises(ServiceError, match="refused 2 requests in a row .*52428843 bytes is larger than the 1048576"):
        caption(tiny_dataset, tmp_path / "s", [server], policy=policy, concurrency=1)
    assert not list((tmp_path / "s").glob("shard-*"))


def test_a_chunked_body_is_cut_off_at_the_cap():
    """Without a Content-Length the body is read as it comes, and given up as soon as it passes the cap."""
    piece = b"x" * 65536
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + (b"10000\r\n" + piece + b"\r\n") * 40
    with RawServer([reply + b"0\r\n\r\n"]) as server:
        (outcome,) = post_all(f"http://127.0.0.1:{server.port}/v1", 1)
    assert outcome.reason == "HTTP 500 3 times: answer body larger than the 1048576-byte cap"


def test_without_aiohttp_the_caption_cli_runs_and_the_engine_is_a_one_line_error(tiny_dataset, tmp_path):
    argv = ["caption", str(tiny_dataset.source), "--engine", "openai", "--api-base", "http://127.0.0.1:1/v1",
            "--out", str(tmp_path / "s"), "--no-progress"]  # fmt: skip
    script = "import sys; sys.modules['aiohttp'] = None; from vlmkd.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "--engine openai needs aiohttp" in err[0] and "pip install" in err[0], err
    assert not (tmp_path / "s").exists()
