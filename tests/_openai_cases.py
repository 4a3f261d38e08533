"""What the openai engine's tests share: fast retries, stub fleets, a caption call, the rows the echo stub gives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator

import vlmkd
from vlmkd.caption.engines.openai.dispatch import Dispatcher, RetryPolicy
from vlmkd.caption.engines.openai.transport import Endpoint, Transport, ssl_context
from vlmkd.caption.prompts import load_prompt_set
from vlmkd.testing.openai_stub import StubServer, echo, echo_caption

# Retries in milliseconds, not seconds: the faults below would otherwise cost minutes.
FAST = RetryPolicy(backoff_base_s=0.002, backoff_max_s=0.02, request_timeout_s=1.0, connect_timeout_s=1.0,
                   dead_after_s=0.3)  # fmt: skip
PROMPTS = load_prompt_set(None)


@contextlib.contextmanager
def stub_fleet() -> Iterator[Callable[..., list[StubServer]]]:
    """`make(n, handler=..., **fields)`: n started stub servers, all stopped on exit."""
    started: list[StubServer] = []

    def make(count: int = 1, handler=echo, **fields) -> list[StubServer]:
        new = [StubServer(handler, **fields).start() for _ in range(count)]
        started.extend(new)
        return new

    try:
        yield make
    finally:
        for server in started:
            server.stop()


def caption(dataset, out, servers, *, policy=FAST, concurrency=8, log=None, model=None, engine_options_extra=None,
            **kwargs):  # fmt: skip
    """`vlmkd.caption` through the openai engine against stub `servers`, quiet and with fast retries."""
    options = {"api_bases": [s.url for s in servers], "concurrency": concurrency, "policy": policy,
               "log": log if log is not None else (lambda message: None), **(engine_options_extra or {})}  # fmt: skip
    kwargs.setdefault("max_new_tokens", 8)
    return vlmkd.caption(
        dataset=dataset, model=model, out=out, engine="openai", progress=False, engine_options=options, **kwargs
    )


def expected_rows(dataset, skip=()):
    """(image index, prompt id, caption) the echo stub gives for every image's own file bytes and prompt."""
    rows = []
    for index, sample in enumerate(dataset.samples):
        if index in skip:
            continue
        data = dataset.path(index).read_bytes()
        for prompt in PROMPTS.prompts:
            rows.append((index, prompt.id, echo_caption(data, prompt.render(dataset.classnames[sample.label]))))
    return rows


def store_rows(store):
    table = store.read_table().to_pydict()
    return list(zip(table["image_index"], table["prompt_id"], table["caption"], strict=True))


def dispatcher_for(urls, concurrency=1, policy=FAST):
    """A bare dispatcher over `urls` (no engine: no discovery), for the HTTP-level tests."""
    transport = Transport(headers={}, ssl_context=ssl_context(None), request_timeout_s=policy.request_timeout_s,
                          connect_timeout_s=policy.connect_timeout_s)  # fmt: skip
    return Dispatcher([Endpoint.parse(url) for url in urls], transport=transport, concurrency=concurrency,
                      policy=policy, log=lambda m: None, redact=str)  # fmt: skip


def post_all(url, count, concurrency=1, body=b"{}"):
    """`count` POSTs to `url`/chat/completions, one after another (or `concurrency` at once): their outcomes."""

    async def go():
        dispatcher = dispatcher_for([url], concurrency)
        outcomes = await asyncio.gather(*(dispatcher.post("/chat/completions", body) for _ in range(count)))
        await dispatcher.close()
        return outcomes

    return asyncio.run(go())


def completion_bytes(text: str) -> bytes:
    """A minimal chat completion's JSON body."""
    return json.dumps({"choices": [{"message": {"content": text}}]}).encode()


def captions_of(outcomes) -> list[str]:
    return [o.body["choices"][0]["message"]["content"] for o in outcomes]
