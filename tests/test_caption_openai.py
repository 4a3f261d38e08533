"""The `openai` engine against loopback stub servers of the tests' own (`vlmkd.testing.openai_stub`): requests
as sent, captions in dataset order, spreading over servers, store identity, the API key, and every fault the
real servers will not produce on demand (429/503 bursts, hangs, dropped connections, a killed server, 400s)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading

import numpy as np
import pytest
from _openai_cases import (
    FAST,
    PROMPTS,
    caption,
    captions_of,
    completion_bytes,
    dispatcher_for,
    expected_rows,
    post_all,
    store_rows,
    stub_fleet,
)
from PIL import Image

import vlmkd
from vlmkd.caption import CaptionStore, GenerationSettings, ImageRequest
from vlmkd.caption.engines.openai.dispatch import RetryPolicy
from vlmkd.caption.engines.openai.engine import OpenAIEngine, request_body_parts, sendable_image
from vlmkd.data import load_rgb
from vlmkd.errors import InputError, ServiceError, StoreMismatchError
from vlmkd.testing.network import RawServer
from vlmkd.testing.openai_stub import (
    Delay,
    Drop,
    Error,
    Hang,
    Reply,
    StubServer,
    echo,
    request_image_bytes,
    request_prompt,
)


@pytest.fixture
def servers():
    with stub_fleet() as make:
        yield make


def scrambled(payload, server):
    """Answers after 0-4 ms, so requests complete out of order."""
    return Delay(random.random() * 0.004, echo(payload, server))


# ------------------------------------------------------------------------------------ what is sent


def test_request_body_is_json_with_every_decoding_setting_explicit():
    head, middle, tail = request_body_parts("m", GenerationSettings(max_new_tokens=7, seed=3))
    body = json.loads(head + b"data:image/png;base64,AAAA" + middle + json.dumps('say "hi"\n').encode() + tail)
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": 'say "hi"\n'}]}]  # fmt: skip
    assert {k: v for k, v in body.items() if k not in ("model", "messages")} == {
        "max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "seed": 3, "n": 1, "stream": False}  # fmt: skip
    sampling = GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, seed=5)
    head, middle, tail = request_body_parts("m", sampling)
    body = json.loads(head + b"x" + middle + b'"p"' + tail)
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 5)
    with pytest.raises(InputError, match="beam search"):
        request_body_parts("m", GenerationSettings(num_beams=2))


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_jpeg_and_8bit_png_files_are_sent_as_they_are_other_images_as_lossless_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    files = {
        "jpeg": _save(rgb, tmp_path / "a.jpg", quality=90),
        "png": _save(rgb, tmp_path / "b.png"),
        "gray-png": _save(rgb.convert("L"), tmp_path / "c.png"),
        "png16": _save(Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)), tmp_path / "d.png"),
        "bmp": _save(rgb, tmp_path / "e.bmp"),
        "webp": _save(rgb, tmp_path / "f.webp", lossless=True),
    }
    for kind, path in files.items():
        image = load_rgb(path)
        mime, data = sendable_image(ImageRequest(image, ("p",), path))
        if kind in ("jpeg", "png", "gray-png"):
            assert data == path.read_bytes(), kind
            assert mime == ("image/jpeg" if kind == "jpeg" else "image/png")
        else:
            assert mime == "image/png" and data != path.read_bytes(), kind
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image)), kind
    mime, data = sendable_image(ImageRequest(rgb, ("p",)))  # no file: the image itself, losslessly
    assert mime == "image/png" and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(rgb))


# ------------------------------------------------------------------------------------- captioning


def test_every_image_and_prompt_is_captioned_in_dataset_order_over_several_servers(tiny_dataset, tmp_path, servers):
    fleet = servers(3, scrambled, keep_payloads=True)
    report = caption(tiny_dataset, tmp_path / "s", fleet, num_shards=3, batch_size=4, seed=11)
    assert store_rows(report.store) == expected_rows(tiny_dataset)
    assert report.failed == [] and report.captions == len(tiny_dataset) * len(PROMPTS.prompts)
    payloads = [p for server in fleet for p in server.requests]
    assert len(payloads) == len(tiny_dataset) * len(PROMPTS.prompts)  # no retries, no duplicates
    assert all(server.chat_requests > 0 for server in fleet)
    for payload in payloads:
        assert payload["model"] == "stub-model" and payload["temperature"] == 0.0 and payload["top_p"] == 1.0
        assert payload["max_tokens"] == 8 and payload["seed"] == 11 and payload["n"] == 1
    manifest = report.store.manifest
    assert manifest["engine"] == "openai" and manifest["model_id"] == "stub-model"
    assert manifest["model_fingerprint"] == "served:stub-model"
    assert manifest["generation"] == {"max_new_tokens": 8, "do_sample": False, "num_beams": 1}


def test_the_least_busy_live_server_is_chosen_and_ties_take_turns():
    dispatcher = dispatcher_for([f"http://127.0.0.1:{9000 + k}/v1" for k in range(4)], concurrency=8)
    a, b, c, d = dispatcher.servers

    def choose(avoid=None):
        return asyncio.run(dispatcher._choose(avoid)).url

    a.outstanding, b.outstanding, c.outstanding, d.outstanding = 3, 1, 2, 1
    assert {choose() for _ in range(8)} == {b.url, d.url}  # the two least busy, in turn
    d.dead = "gone"
    assert {choose() for _ in range(4)} == {b.url}
    b.suspended_until = float("inf")  # paused after a failed connection
    assert choose() == c.url
    assert choose(avoid=c) == a.url  # a retry prefers another server than the one that just failed
    for server in dispatcher.servers:
        server.dead = "gone"
    with pytest.raises(ServiceError, match="no server left"):
        choose()


def test_rerun_resumes_and_another_served_model_is_refused(tiny_dataset, tmp_path, servers):
    first = servers(1)
    out = tmp_path / "s"
    store = caption(tiny_dataset, out, first, num_shards=3).store
    reference = store_rows(store)
    store.shard_path(1).unlink()
    report = caption(tiny_dataset, out, first)
    assert report.shards_written == [1] and store_rows(report.store) == reference
    other = servers(1, model="another-model")
    with pytest.raises(StoreMismatchError, match="model_fingerprint: 'served:stub-model' in the store"):
        caption(tiny_dataset, out, other)
    replaced = caption(tiny_dataset, out, other, overwrite=True).store
    assert replaced.manifest["model_id"] == "another-model" and CaptionStore.open(out).missing_shards() == []


def test_model_choice_is_checked_against_what_every_server_serves(tiny_dataset, tmp_path, servers):
    (a,), (b,) = servers(1, model="llava"), servers(1, model="qwen")
    with pytest.raises(InputError, match=r"2 models \(llava, qwen\); choose one with --model"):
        caption(tiny_dataset, tmp_path / "s", [a, b])
    with pytest.raises(InputError, match=r"model 'llava' is not served by every server \(.* serves qwen\)"):
        caption(tiny_dataset, tmp_path / "s", [a, b], model="llava")
    assert not (tmp_path / "s").exists()
    assert caption(tiny_dataset, tmp_path / "s", [a], model="llava").store.manifest["model_id"] == "llava"


def test_api_key_comes_from_the_environment_and_appears_nowhere(tiny_dataset, tmp_path, servers, monkeypatch):
    key = "sk-test-0123456789abcdef"
    server = servers(1, api_key=key)[0]
    monkeypatch.setenv("VLMKD_TEST_KEY", key)
    logs: list[str] = []
    options = {"api_bases": [server.url], "policy": FAST, "api_key_env": "VLMKD_TEST_KEY", "log": logs.append}
    store = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", engine="openai", max_new_tokens=4,
                          progress=False, engine_options=options).store  # fmt: skip
    assert store_rows(store) == expected_rows(tiny_dataset)  # the key was sent: the stub answers 401 otherwise
    assert all(key.encode() not in path.read_bytes() for path in (tmp_path / "s").iterdir())
    monkeypatch.setenv("VLMKD_TEST_KEY", key[:-1] + "X")  # a wrong key, which the stub's 401 quotes back
    with pytest.raises(ServiceError) as caught:
        vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "t", engine="openai", progress=False, engine_options=options)
    assert "HTTP 401" in str(caught.value) and "***" in str(caught.value) and key[:-1] not in str(caught.value)
    assert logs and not any(key[:-1] in line for line in logs)


# ----------------------------------------------------------------------------------------- faults


class Burst:
    """Answers `status` to the first `count` chat requests (after the first `after`), then echoes."""

    def __init__(self, status: int, count: int, after: int = 0, retry_after: str | None = None) -> None:
        self.status, self.count, self.after, self.seen = status, count, after, 0
        self.headers = (("retry-after", retry_after),) if retry_after else ()
        self.lock = threading.Lock()

    def __call__(self, payload, server):
        with self.lock:
            self.seen += 1
            hit = self.after < self.seen <= self.after + self.count
        return Error(self.status, {"error": {"message": "busy"}}, self.headers) if hit else echo(payload, server)


@pytest.mark.parametrize("status", [429, 503])
def test_overload_bursts_are_retried_until_every_caption_is_in(tiny_dataset, tmp_path, servers, status):
    burst = Burst(status, count=25, after=3, retry_after="0")
    fleet = servers(2, burst)
    report = caption(tiny_dataset, tmp_path / "s", fleet)
    assert store_rows(report.store) == expected_rows(tiny_dataset) and report.failed == []
    assert burst.seen == 60 + 25  # every refused attempt came back once more


def test_slow_and_hung_answers_time_out_and_are_retried(tiny_dataset, tmp_path, servers):
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(payload, server):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n % 7 == 0:
            return Hang()
        return Delay(0.2 if n % 5 == 0 else 0.0, echo(payload, server))

    policy = RetryPolicy(backoff_base_s=0.002, backoff_max_s=0.02, request_timeout_s=0.5, dead_after_s=5)
    report = caption(tiny_dataset, tmp_path / "s", servers(2, flaky), policy=policy)
    assert store_rows(report.store) == expected_rows(tiny_dataset)
    assert calls["n"] > 60  # the hung ones were sent again


def test_a_connection_dropped_mid_body_is_retried(tiny_dataset, tmp_path, servers):
    dropped = []

    def dropping(payload, server):
        if len(dropped) < 10 and random.random() < 0.3:
            dropped.append(1)
            return Drop()
        return echo(payload, server)

    report = caption(tiny_dataset, tmp_path / "s", servers(1, dropping))
    assert store_rows(report.store) == expected_rows(tiny_dataset) and dropped


def test_a_server_killed_mid_run_is_skipped_and_the_others_finish(tiny_dataset, tmp_path, servers):
    doomed: list[StubServer] = []
    count = {"n": 0}

    def dies_after_ten(payload, server):
        count["n"] += 1
        if count["n"] == 10:
            threading.Thread(target=server.stop).start()  # the process is gone: in-flight and new requests fail
            return Hang()
        return Delay(0.003, echo(payload, server))

    doomed = servers(1, dies_after_ten)
    logs: list[str] = []
    others = servers(2, lambda payload, server: Delay(0.003, echo(payload, server)))
    report = caption(tiny_dataset, tmp_path / "s", [*doomed, *others], log=logs.append)
    assert store_rows(report.store) == expected_rows(tiny_dataset)
    assert any("unreachable" in line and doomed[0].url in line for line in logs), logs


def test_no_server_left_is_one_line_error_and_finished_shards_stay(tiny_dataset, tmp_path, servers, capsys):
    count = {"n": 0}

    def dies(payload, server):
        count["n"] += 1
        if count["n"] == 26:  # after five images: shard 0 of 12 one-image shards... written
            threading.Thread(target=server.stop).start()
            return Hang()
        return echo(payload, server)

    fleet = servers(1, dies)
    with pytest.raises(ServiceError, match="no server left: .*unreachable") as caught:
        caption(tiny_dataset, tmp_path / "s", fleet, num_shards=12, concurrency=1, batch_size=5)
    assert "\n" not in str(caught.value)
    store = CaptionStore.open(tmp_path / "s")
    assert 0 < 12 - len(store.missing_shards()) < 12


def test_images_a_server_refuses_are_logged_failures_like_unreadable_ones(tiny_dataset, tmp_path, servers):
    bad = {tiny_dataset.path(i).read_bytes() for i in (2, 9)}
    attempts = {"bad": 0}

    def refuses_two_images(payload, server):
        if request_image_bytes(payload) in bad:
            attempts["bad"] += 1
            return Error(400, {"error": {"message": "image is too small for this model"}})
        return echo(payload, server)

    tiny_dataset.path(5).write_bytes(b"not an image")
    logs: list[str] = []
    report = caption(tiny_dataset, tmp_path / "s", servers(2, refuses_two_images), log=logs.append)
    failed = {index: reason for index, _, reason in report.store.failed_images()}
    assert sorted(failed) == [2, 5, 9]
    assert failed[2].startswith("refused by the server (prompt G): HTTP 400: image is too small for this model")
    assert "not an image" in failed[5] or "corrupt" in failed[5] or "PIL" in failed[5]
    assert store_rows(report.store) == expected_rows(tiny_dataset, skip={2, 5, 9})
    assert attempts["bad"] == 2 * 2  # two images' first prompts, refused twice each; their other prompts not sent


def test_a_repeated_500_fails_that_image_and_a_passing_500_is_retried(tiny_dataset, tmp_path, servers):
    bad = tiny_dataset.path(4).read_bytes()
    seen: set[str] = set()
    lock = threading.Lock()

    def errors(payload, server):
        key = request_prompt(payload) + str(hash(request_image_bytes(payload)))
        with lock:
            first = key not in seen
            seen.add(key)
        if request_image_bytes(payload) == bad or first:  # every request's first try fails; image 4 always
            return Error(500, "Internal Server Error")
        return echo(payload, server)

    report = caption(tiny_dataset, tmp_path / "s", servers(1, errors))
    assert [i for i, _, _ in report.store.failed_images()] == [4]
    assert "HTTP 500 3 times: Internal Server Error" in report.store.failed_images()[0][2]
    assert store_rows(report.store) == expected_rows(tiny_dataset, skip={4})


def test_a_server_that_refuses_everything_stops_the_run_instead_of_failing_every_image(tiny_dataset, tmp_path,
                                                                                      servers):  # fmt: skip
    fleet = servers(1, lambda payload, server: Error(422, {"detail": [{"msg": "Extra inputs are not permitted"}]}))
    policy = RetryPolicy(backoff_base_s=0.001, refusals_in_a_row=10)
    with pytest.raises(ServiceError, match="refused 10 requests in a row .*Extra inputs are not permitted"):
        caption(tiny_dataset, tmp_path / "s", fleet, policy=policy)
    assert CaptionStore.open(tmp_path / "s").missing_shards() == [0]


def test_transient_errors_past_the_retry_budget_stop_the_run(tiny_dataset, tmp_path, servers):
    fleet = servers(1, lambda payload, server: Error(503, "overloaded"))
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.001)
    with pytest.raises(ServiceError, match="failed 4 times in a row .*HTTP 503"):
        caption(tiny_dataset, tmp_path / "s", fleet, policy=policy)


def test_unreachable_servers_at_start(tiny_dataset, tmp_path, servers):
    alive = servers(1)[0]
    gone = servers(1)[0]
    gone.stop()
    logs: list[str] = []
    store = caption(tiny_dataset, tmp_path / "s", [gone, alive], log=logs.append).store
    assert store_rows(store) == expected_rows(tiny_dataset)
    assert any(f"skipping server {gone.url}" in line for line in logs)
    with pytest.raises(ServiceError, match="no server answered GET /models"):
        caption(tiny_dataset, tmp_path / "t", [gone])


def test_bad_server_urls_are_input_errors():
    for url, message in [("ftp://x/v1", "http:// or https://"), ("http://u:p@host/v1", "credentials")]:
        with pytest.raises(InputError, match=message):
            OpenAIEngine(None, GenerationSettings(), api_bases=[url])
    with pytest.raises(InputError, match="twice"):
        OpenAIEngine(None, GenerationSettings(), api_bases=["http://a:1/v1", "http://a:1/v1/"])


def test_answers_without_message_content_are_failures_not_crashes(tiny_dataset, tmp_path, servers):
    def empty(payload, server):
        return Reply(None) if request_prompt(payload).startswith("Describe this") else echo(payload, server)  # type: ignore[arg-type]

    policy = RetryPolicy(backoff_base_s=0.001, refusals_in_a_row=1000)
    report = caption(tiny_dataset, tmp_path / "s", servers(1, empty), policy=policy)
    assert len(report.store.failed_images()) == len(tiny_dataset)
    assert "answered without message content" in report.store.failed_images()[0][2]


# -------------------------------------------------------------------------------------------- CLI


def test_cli_summary_counts_refused_images_and_a_lost_fleet_is_one_line(tiny_dataset, tmp_path, servers, capsys):
    from vlmkd.cli import main

    bad = tiny_dataset.path(3).read_bytes()

    def refuses_one(payload, server):
        return Error(400, "bad image") if request_image_bytes(payload) == bad else echo(payload, server)

    (server,) = servers(1, refuses_one)
    argv = ["caption", str(tiny_dataset.source), "--engine", "openai", "--api-base", server.url, "--no-progress",
            "--concurrency", "4", "--max-new-tokens", "5"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "1 images skipped (0 unreadable, 1 refused by the servers; recorded in the store):" in captured.out
    assert f"{tiny_dataset.samples[3].path}: refused by the server (prompt G): HTTP 400: bad image" in captured.out
    assert "skipping " in captured.err and "HTTP 400: bad image" in captured.err
    server.stop()
    assert main([*argv, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vlmkd caption: error: no server answered GET /models") and "Traceback" not in err[-1]
    with pytest.raises(SystemExit) as caught:  # argparse's usage error
        main(["caption", str(tiny_dataset.source), "--engine", "openai", "--out", str(tmp_path / "u")])
    assert caught.value.code == 2 and "--engine openai needs --api-base" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- HTTP framing


def test_chunked_and_close_delimited_answers_are_read_whole():
    body = completion_bytes("chunked caption")
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % 10 + body[:10] + b"\r\n"
               + b"%x;ext=1\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n")  # fmt: skip
    with RawServer([chunked]) as server:
        assert captions_of(post_all(f"http://127.0.0.1:{server.port}/v1", 3)) == ["chunked caption"] * 3
        assert server.connections == 1  # a chunked answer keeps the connection alive
    close_delimited = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + completion_bytes("until the end")
    with RawServer([close_delimited], close_after=True) as server:
        assert captions_of(post_all(f"http://127.0.0.1:{server.port}/v1", 3)) == ["until the end"] * 3
        assert server.connections == 3


def test_a_keep_alive_connection_the_server_closed_is_replaced_without_a_retry():
    """A server that drops idle connections without saying so: the reused one fails before any answer, and
    the request goes out again at once on a new connection (no backoff, no retry counted)."""
    body = completion_bytes("fresh")
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with RawServer([reply], close_after=True) as server:  # closes, but announces keep-alive

        async def go():
            dispatcher = dispatcher_for([f"http://127.0.0.1:{server.port}/v1"])
            outcomes = []
            for _ in range(4):
                outcomes.append(await dispatcher.post("/chat/completions", b"{}"))
                await asyncio.sleep(0.02)  # let the server's close arrive
            await dispatcher.close()
            return outcomes, dispatcher.retries

        outcomes, retries = asyncio.run(go())
        assert captions_of(outcomes) == ["fresh"] * 4
        assert retries == {} and server.connections == 4


def test_engine_options_can_be_plain_data_as_in_a_yaml_stage_config(tiny_dataset, tmp_path, servers):
    from vlmkd.caption import CaptionConfig

    (server,) = servers(1)
    options = {"api_bases": [server.url], "concurrency": 4, "policy": {"backoff_base_s": 0.01, "dead_after_s": 1.0}}
    config = CaptionConfig(out=tmp_path / "s", engine="openai", engine_options=options, progress=False)
    again = CaptionConfig.from_yaml(config.to_yaml(tmp_path / "caption.yaml"))
    assert again == config
    store = vlmkd.caption(again, dataset=tiny_dataset, max_new_tokens=8).store
    assert store_rows(store) == expected_rows(tiny_dataset)
    with pytest.raises(InputError, match="engine_options.policy: .*unexpected keyword argument 'retries'"):
        OpenAIEngine(None, GenerationSettings(), api_bases=[server.url], policy={"retries": 3})
