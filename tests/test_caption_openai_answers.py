"""The openai engine's rules for what servers say (issue #26): secrets never leave the process (masked before any
cut, at every offset of a long message, on stderr and in the store), answers are checked before they are stored
(the model served, empty and whitespace captions, caption length), and bad timeouts are refused in one line."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
from _openai_cases import FAST, PROMPTS, caption, dispatcher_for, expected_rows, store_rows, stub_fleet

from vlmkd.caption import CaptionStore, GenerationSettings
from vlmkd.caption.engines.openai.dispatch import REASON_CHARS, RetryPolicy
from vlmkd.caption.engines.openai.engine import OpenAIEngine
from vlmkd.caption.engines.openai.redaction import FRAGMENT_CHARS, Redactor
from vlmkd.caption.engines.openai.transport import Response
from vlmkd.errors import InputError, ServiceError
from vlmkd.testing.openai_stub import Error, Reply, echo, request_image_bytes, request_prompt

KEY = "sk-proj-" + "Zq7Lm2Xv9Rt4Wb6Ny1Kc8Hd3Jf5Gs0Pa" * 2  # 72 characters, as long as real project keys


@pytest.fixture
def servers():
    with stub_fleet() as make:
        yield make


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Every piece of `secret` of FRAGMENT_CHARS characters found in `text` (none: nothing of it leaked)."""
    return [secret[i : i + FRAGMENT_CHARS] for i in range(len(secret) - FRAGMENT_CHARS + 1)
            if secret[i : i + FRAGMENT_CHARS] in text]  # fmt: skip


# --------------------------------------------------------------------------------------------- secrets


@functools.cache
def redacting_dispatcher():
    dispatcher = dispatcher_for(["http://127.0.0.1:1/v1"])
    dispatcher.redact = Redactor([KEY])
    return dispatcher


def excerpt_of(body: str) -> str:
    """The one line the dispatcher makes of an error body (what goes to stderr and into the store)."""
    return redacting_dispatcher().excerpt(Response(400, {}, body.encode()))


@pytest.mark.parametrize("form", ["json message", "plain text"])
def test_the_key_at_every_offset_of_a_long_error_is_masked_before_the_cut(form):
    """A server's 700-character error quoting the key (whole, or cut short by the server itself) anywhere:
    the one-line excerpt never holds a fragment of it, wherever the key falls relative to the cut."""
    for quoted in (KEY, KEY[:37]):  # the whole key, and the 37 characters the old cut let through
        for offset in range(0, 700 - len(quoted) + 1):
            text = "x" * offset + f"Authorization: Bearer {quoted}" + "y" * (700 - offset - len(quoted))
            body = f'{{"error": {{"message": "{text}"}}}}' if form == "json message" else text
            excerpt = excerpt_of(body)
            assert len(excerpt) <= REASON_CHARS and "\n" not in excerpt
            assert leaks(excerpt, quoted) == [], (offset, excerpt)


def test_a_json_escaped_key_is_masked_too():
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)  # what a JSON encoder may write
    assert leaks(excerpt_of(f'{{"detail": "bad key {escaped}"}}')) == []


def test_keys_and_gateway_secrets_quoted_by_servers_reach_neither_stderr_nor_the_store(
    tiny_dataset, tmp_path, servers, monkeypatch, capsys
):
    """Each image's first prompt is refused with a long message quoting the request's headers, the key placed
    at a different offset per image (around the 300-character cut): the CLI's stderr, its summary and every file
    of the store hold no fragment of the API key or of the gateway header's secret value."""
    from vlmkd.cli import main

    gateway = "gw-" + "Q1w2E3r4T5y6U7i8O9p0" * 2
    images = {tiny_dataset.path(i).read_bytes(): i for i in range(len(tiny_dataset))}

    def quoting(payload, server):
        index = images[request_image_bytes(payload)]
        if index % 3 == 2:
            return echo(payload, server)
        pad = "-" * (180 + 11 * index)  # offsets 180..301
        return Error(400, {"error": {"message": f"{pad} rejected headers: authorization=Bearer {KEY} "
                                                f"api-key={gateway} x-route=blue"}})  # fmt: skip

    (server,) = servers(1, quoting)
    monkeypatch.setenv("VLMKD_TEST_KEY", KEY)
    out = tmp_path / "s"
    argv = ["caption", str(tiny_dataset.source), "--engine", "openai", "--api-base", server.url, "--no-progress",
            "--api-key-env", "VLMKD_TEST_KEY", "--header", f"api-key={gateway}", "--header", "x-route=blue",
            "--out", str(out), "--max-new-tokens", "5"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "refused by the server (prompt G): HTTP 400:" in captured.out and "***" in captured.err
    for text in (captured.out, captured.err):
        assert leaks(text) == [] and leaks(text, gateway) == []
    failed = CaptionStore.open(out).failed_images()
    assert len(failed) == 8 and all(len(reason) < 400 for _, _, reason in failed)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("latin-1")
            assert leaks(data) == [] and leaks(data, gateway) == [], path


# --------------------------------------------------------------------------------------------- answers


def test_empty_and_whitespace_answers_are_failures_and_a_server_giving_only_those_stops_the_run(
    tiny_dataset, tmp_path, servers
):
    """Once a server answering '   ' for every caption had them all stored and the store called complete."""
    blank = {tiny_dataset.path(i).read_bytes(): text for i, text in ((1, ""), (4, "   \n\t "))}

    def some_blank(payload, server):
        text = blank.get(request_image_bytes(payload))
        return Reply(text) if text is not None else echo(payload, server)

    report = caption(tiny_dataset, tmp_path / "s", servers(1, some_blank))
    failed = {index: reason for index, _, reason in report.store.failed_images()}
    assert sorted(failed) == [1, 4]
    assert "empty answer" in failed[1] and "answer of whitespace only (6 characters)" in failed[4]
    assert store_rows(report.store) == expected_rows(tiny_dataset, skip={1, 4})

    policy = dataclasses.replace(FAST, refusals_in_a_row=5)
    with pytest.raises(ServiceError, match=r"refused 5 requests in a row \(last: .*whitespace only"):
        caption(tiny_dataset, tmp_path / "t", servers(1, lambda payload, server: Reply("   ")), policy=policy)
    assert CaptionStore.open(tmp_path / "t").failed_images() == []  # nothing written: no shard finished


def test_captions_longer_than_the_cap_are_failures(tiny_dataset, tmp_path, servers):
    long_one = tiny_dataset.path(3).read_bytes()

    def rambling(payload, server):
        return Reply("word " * 400) if request_image_bytes(payload) == long_one else echo(payload, server)

    (server,) = servers(1, rambling)
    report = caption(tiny_dataset, tmp_path / "s", [server])  # max_new_tokens 8: the cap is 1,024 characters
    (failure,) = report.store.failed_images()
    assert failure[0] == 3 and "answer of 1,999 characters, more than --max-caption-chars 1,024" in failure[2]
    raised = caption(tiny_dataset, tmp_path / "t", [server], engine_options_extra={"max_caption_chars": 4096})
    assert raised.store.failed_images() == []
    with pytest.raises(InputError, match=r"--max-caption-chars must be in \[1, 8192\]"):
        OpenAIEngine(None, GenerationSettings(), api_bases=[server.url], max_caption_chars=100_000)


def test_a_server_answering_as_another_model_is_given_up_or_with_record_kept_and_named(tiny_dataset, tmp_path,
                                                                                      servers):  # fmt: skip
    (honest,) = servers(1, keep_payloads=True)
    (other,) = servers(1, answers_as="llava-13b-swapped", keep_payloads=True)
    logs: list[str] = []
    report = caption(tiny_dataset, tmp_path / "s", [other, honest], log=logs.append)
    assert store_rows(report.store) == expected_rows(tiny_dataset)  # every caption from the honest server
    assert any(f"giving up on server {other.url}: it answers as model 'llava-13b-swapped' when asked for "
               "'stub-model'" in line for line in logs), logs  # fmt: skip
    with pytest.raises(ServiceError, match="no server left: .*answers as model 'llava-13b-swapped'.*--served-model"):
        caption(tiny_dataset, tmp_path / "t", [other])

    logs.clear()
    kept = caption(tiny_dataset, tmp_path / "u", [other], log=logs.append,
                   engine_options_extra={"served_model": "record"})  # fmt: skip
    assert store_rows(kept.store) == expected_rows(tiny_dataset)
    assert [line for line in logs if "answers as model" in line] == [
        f"openai engine: server {other.url} answers as model 'llava-13b-swapped' when asked for 'stub-model'; keeping "
        "its answers "
        "and recording the name in each caption's shard (--served-model record)"]  # fmt: skip

    (revisioned,) = servers(1, answers_as="stub-model@main")  # transformers serve names hub models repo@revision
    assert caption(tiny_dataset, tmp_path / "v", [revisioned]).store.failed_images() == []


def shard_served_as(store_path):
    """(model name, image index, prompt id) of every caption the shard files on disk record as answered under
    another model's name, read with pyarrow from each file's footer (not through vlmkd's reader)."""
    recorded = []
    for path in sorted(store_path.glob("shard-*.parquet")):
        served = (pq_metadata(path) or {}).get(b"vlmkd.served_as")
        for name, captions in json.loads(served or b"{}").items():
            recorded += [(name, index, prompt) for index, prompt in captions]
    return sorted(recorded)


def test_with_served_model_record_the_name_a_server_gave_is_written_into_each_captions_shard(
    tiny_dataset, tmp_path, servers, monkeypatch, capsys
):
    """`--served-model record` once only logged what a server said it served: the store said nothing of it. Now
    each caption's shard records the name its answer gave, for exactly the captions that server answered (its
    received requests, by image bytes and prompt text); an honest server's captions record nothing, and a
    hostile name is masked of the key and cut before it is stored."""
    from vlmkd.cli import main

    images = {tiny_dataset.path(i).read_bytes(): i for i in range(len(tiny_dataset))}
    prompts = {}  # rendered prompt text -> prompt id, per image
    for index, sample in enumerate(tiny_dataset.samples):
        for prompt in PROMPTS.prompts:
            prompts[index, prompt.render(tiny_dataset.classnames[sample.label])] = prompt.id

    def received(server):
        return sorted((images[request_image_bytes(p)], prompts[images[request_image_bytes(p)], request_prompt(p)])
                      for p in server.requests)  # fmt: skip

    (honest,) = servers(1, keep_payloads=True)
    (other,) = servers(1, answers_as="llava-13b-swapped", keep_payloads=True)
    out = tmp_path / "mixed"
    kept = caption(tiny_dataset, out, [honest, other], num_shards=4, engine_options_extra={"served_model": "record"})
    assert store_rows(kept.store) == expected_rows(tiny_dataset)
    answered = received(other)
    assert answered and received(honest)  # both servers took part
    assert shard_served_as(out) == [("llava-13b-swapped", i, p) for i, p in answered]
    assert {name: sorted(c) for name, c in CaptionStore.open(out).served_as().items()} == {
        "llava-13b-swapped": answered}  # fmt: skip
    clean = caption(tiny_dataset, tmp_path / "honest", [honest], num_shards=4)
    assert shard_served_as(clean.store.path) == [] and clean.store.served_as() == {}
    for path in sorted(clean.store.path.glob("shard-*.parquet")):  # nothing added where nothing was served as
        assert b"vlmkd.served_as" not in (pq_metadata(path) or {})

    hostile = "x" * 300 + KEY  # a name quoting the key past a 256-character cut
    (liar,) = servers(1, answers_as=hostile)
    monkeypatch.setenv("VLMKD_TEST_KEY", KEY)
    out = tmp_path / "cli"
    argv = ["caption", str(tiny_dataset.source), "--engine", "openai", "--api-base", liar.url, "--no-progress",
            "--api-key-env", "VLMKD_TEST_KEY", "--served-model", "record", "--out", str(out), "--max-new-tokens",
            "5", "--num-shards", "3"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    recorded = shard_served_as(out)
    assert len(recorded) == len(tiny_dataset) * len(PROMPTS.prompts)
    (name,) = {name for name, _, _ in recorded}
    assert len(name) <= 256 and name.startswith("x" * 200) and leaks(name) == []
    for text in (captured.out, captured.err):
        assert leaks(text) == []
    for path in out.rglob("*"):
        if path.is_file():
            assert leaks(path.read_bytes().decode("latin-1")) == [], path
    assert main(["caption-info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [len(captions) for captions in info["served_as"].values()] == [len(recorded)]


def pq_metadata(path):
    import pyarrow.parquet as pq

    return pq.read_metadata(path).metadata


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("value", ["nan", "-5", "inf", "0", "soon"])
def test_bad_request_timeouts_are_refused_in_one_line(tiny_dataset, tmp_path, capsys, value):
    from vlmkd.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["caption", str(tiny_dataset.source), "--engine", "openai", "--api-base", "http://127.0.0.1:1/v1",
              "--out", str(tmp_path / "s"), f"--request-timeout={value}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2 and len(err) == 1
    assert f"argument --request-timeout: must be a finite number of seconds > 0, got '{value}'" in err[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", [math.nan, -5.0, math.inf, 0.0])
def test_a_retry_policy_with_a_bad_time_is_an_input_error(value):
    with pytest.raises(InputError, match=r"request_timeout_s must be a finite number > 0"):
        RetryPolicy(request_timeout_s=value)
