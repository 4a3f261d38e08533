"""The `openai` engine: caption through OpenAI-compatible chat-completions servers (trtllm-serve, vLLM,
SGLang, `transformers serve`), many at once.

One chat request per (image, prompt), every prompt of an image to one server (`routing`: the first prompt
alone, the others once it is answered, so that the server's prefix cache reuses the image): a user turn with
the image as a data URL (the file's own bytes when it is a JPEG or an 8-bit PNG, a lossless PNG of the decoded
image otherwise) followed by the prompt text, and every decoding setting sent explicitly (`temperature` 0 for
greedy, `top_p`, `max_tokens`, `seed`, `n`), so no server default changes the captions. Requests run on an
asyncio loop (uvloop's when installed) of the engine's own thread, are spread by `dispatch.Dispatcher` and
travel by `transport.Transport` (aiohttp). The API key comes from an environment variable and, like every
secret gateway header, is masked in every message the engine produces (`redaction.Redactor`); it is never
stored.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from vlmkd.bounded_read import short_repr
from vlmkd.caption.engines.base import (
    MAX_SERVED_NAME_CHARS,
    Caption,
    CaptionEngine,
    GenerationSettings,
    ImageRequest,
    RequestFailure,
    ServedCaption,
)
from vlmkd.caption.engines.openai.dispatch import Dispatcher, Refused, Rejected, WrongServer
from vlmkd.caption.engines.openai.redaction import Redactor, looks_secret
from vlmkd.caption.engines.openai.routing import Route, image_key
from vlmkd.caption.engines.openai.settings import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_CONCURRENCY,
    SERVED_MODEL_CHOICES,
    RetryPolicy,
)
from vlmkd.caption.engines.openai.transport import (
    DEFAULT_MAX_BODY_BYTES,
    Endpoint,
    Transport,
    header_pairs,
    new_event_loop,
    proxy_for,
    ssl_context,
)
from vlmkd.caption.shard_file import MAX_CAPTION_CHARS, caption_problem
from vlmkd.errors import InputError, ServiceError
from vlmkd.version import __version__

CHAT_PATH = "/chat/completions"
CHARS_PER_NEW_TOKEN = 32  # longer answers did not keep to max_tokens (a token decodes to a few characters)
MODELS_PATH = "/models"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = TypeVar("T")


def sendable_image(request: ImageRequest) -> tuple[str, bytes]:
    """(MIME type, bytes) to send for a request's image: the file itself when servers decode it exactly as
    vlmkd does (JPEG, 8-bit PNG), otherwise the decoded RGB image as PNG."""
    if request.path is not None:
        try:
            data = Path(request.path).read_bytes()
        except OSError:
            data = b""
        if data.startswith(_JPEG_MAGIC):
            return "image/jpeg", data
        if data.startswith(_PNG_MAGIC) and len(data) > 25 and data[24] == 8:  # IHDR bit depth
            return "image/png", data
    buffer = io.BytesIO()
    request.image.save(buffer, format="PNG", compress_level=1)
    return "image/png", buffer.getvalue()


def request_body_parts(model: str, settings: GenerationSettings) -> tuple[bytes, bytes, bytes]:
    """The JSON body of a chat request in three constant pieces around the data URL and the prompt:
    `head + data_url + middle + json(prompt) + tail`. Base64 needs no escaping, so a request costs two joins
    instead of re-serialising an image-sized string."""
    marker_url, marker_text = "\x00URL\x00", "\x00TEXT\x00"
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": marker_url}},
                    {"type": "text", "text": marker_text},
                ],
            }
        ],
        **decoding_fields(settings),
    }
    text = json.dumps(body, separators=(",", ":"))
    head, rest = text.split(json.dumps(marker_url))
    middle, tail = rest.split(json.dumps(marker_text))
    return (head + '"').encode(), ('"' + middle).encode(), tail.encode()


def decoding_fields(settings: GenerationSettings) -> dict[str, Any]:
    """Every decoding setting, explicit: servers differ in their defaults (trtllm-serve samples at
    temperature 1.0 when none is sent, vLLM defers to the checkpoint's generation config)."""
    if settings.num_beams != 1:
        raise InputError("--engine openai cannot do beam search (the chat-completions API has no such setting)")
    sampling = settings.do_sample
    return {
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature if sampling else 0.0,
        "top_p": settings.top_p if sampling else 1.0,
        "seed": settings.seed,
        "n": 1,
        "stream": False,
    }


def default_caption_cap(settings: GenerationSettings) -> int:
    """The longest caption accepted by default: `CHARS_PER_NEW_TOKEN` per requested token, at least 1,024
    characters and at most what a caption store holds."""
    return min(MAX_CAPTION_CHARS, max(1024, CHARS_PER_NEW_TOKEN * settings.max_new_tokens))


def served_models(listing: Any) -> list[str]:
    """Model ids in a `GET /v1/models` answer (`{"data": [{"id": ...}, ...]}`)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ValueError("no 'data' list")
    return [item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]


class OpenAIEngine(CaptionEngine):
    """Captions through one or more OpenAI-compatible servers at `api_bases` (each like `http://host:8000/v1`).

    `model`: the model name to request; `None` takes the one model the servers report. The engine checks
    that every reachable server serves it (`GET /models`) and records that name as the store's model
    identity: weights behind a URL cannot be fingerprinted. `policy` (a `RetryPolicy` or a mapping of its
    fields) says how hard to retry. `headers` go with every request (gateways: `{"api-key": ...}`; values
    of secret-looking names are masked like the key), `ca_bundle` is a PEM file of CAs to trust for
    `https://` servers (default: the system's, or `SSL_CERT_FILE`); proxies come from `HTTPS_PROXY` /
    `HTTP_PROXY` / `NO_PROXY`. `uvloop`: None uses it when installed, False never. `max_body_bytes` caps an
    answer's body. `device` and `trust_remote_code` are the servers' business and not used.
    """

    name = "openai"
    describes_itself = True

    def __init__(
        self,
        model: str | None,
        settings: GenerationSettings,
        *,
        device: str = "cpu",
        trust_remote_code: bool = False,
        api_bases: Sequence[str] = (),
        concurrency: int = DEFAULT_CONCURRENCY,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        policy: RetryPolicy | dict[str, float] | None = None,
        headers: Mapping[str, str] | None = None,
        ca_bundle: str | Path | None = None,
        uvloop: bool | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_caption_chars: int | None = None,
        served_model: str = "require",
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not api_bases:
            raise InputError("--engine openai needs at least one --api-base URL (e.g. http://host:8000/v1)")
        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}")
        if max_body_bytes < 1024:
            raise InputError(f"max_body_bytes must be >= 1024, got {max_body_bytes}")
        if max_caption_chars is not None and not 1 <= max_caption_chars <= MAX_CAPTION_CHARS:
            raise InputError(f"--max-caption-chars must be in [1, {MAX_CAPTION_CHARS}], got {max_caption_chars}")
        if served_model not in SERVED_MODEL_CHOICES:
            raise InputError(f"--served-model must be one of {', '.join(SERVED_MODEL_CHOICES)}, got {served_model!r}")
        endpoints = [Endpoint.parse(url) for url in api_bases]
        if len({e.base for e in endpoints}) != len(endpoints):
            raise InputError(f"--api-base lists a server twice: {', '.join(e.url for e in endpoints)}")
        decoding_fields(settings)  # refuses what the API cannot express
        if isinstance(policy, dict):  # plain settings, as a YAML stage config holds them
            try:
                policy = RetryPolicy(**policy)
            except TypeError as error:
                raise InputError(f"engine_options.policy: {error}") from None
        policy = policy or RetryPolicy()
        self.settings = settings
        self.max_caption_chars = max_caption_chars or default_caption_cap(settings)
        self.served_model = served_model
        self.served_as: dict[str, collections.Counter[str]] = {}  # server -> other model names it answered as
        self.concurrency = concurrency
        self.submit_ahead = 2 * concurrency
        self.servers_per_image: collections.Counter[int] = collections.Counter()  # servers that answered -> images
        self.images_on_first_choice = 0  # images answered wholly by the first server of their ranking
        self.log = log or (lambda message: print(message, file=sys.stderr))
        key = os.environ.get(api_key_env) or None
        sent = {"user-agent": f"vlmkd/{__version__}", "content-type": "application/json",
                "accept": "application/json"}  # fmt: skip
        if key:
            sent["authorization"] = f"Bearer {key}"
        sent.update(header_pairs(headers or {}))
        self.redact = Redactor(
            [key or "", *(v for name, v in sent.items() if looks_secret(name))]
            + [secret for endpoint in endpoints for secret in endpoint.secrets()]
            + [proxy.password or "" for proxy in map(proxy_for, (e.base for e in endpoints)) if proxy is not None]
        )
        transport = Transport(headers=sent, ssl_context=ssl_context(ca_bundle), max_body_bytes=max_body_bytes,
                              request_timeout_s=policy.request_timeout_s,
                              connect_timeout_s=policy.connect_timeout_s)  # fmt: skip
        self.dispatcher = Dispatcher(
            endpoints, transport=transport, concurrency=concurrency, policy=policy, log=self._log,
            redact=self.redact,
        )  # fmt: skip
        self._loop, self.event_loop = new_event_loop(uvloop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmkd-openai", daemon=True)
        self._thread.start()
        try:
            self.model_id = self._run(self._discover(model))
        except BaseException:
            self.close()
            raise
        self._body_parts = request_body_parts(self.model_id, settings)

    # ------------------------------------------------------------------------------------ identity
    def model_fingerprint(self) -> str:
        """The model name the servers report: all a client can know of weights behind a URL."""
        return f"served:{self.model_id}"

    def generation_record(self) -> dict[str, Any]:
        record = self.settings.record()
        record.pop("dtype")  # the servers' business; not sent
        return record

    def _log(self, message: str) -> None:
        self.log(f"openai engine: {self.redact(message)}")

    async def _discover(self, wanted: str | None) -> str:
        """Ask every server what it serves; drop the unreachable ones; the model every other one serves."""
        served: dict[str, list[str]] = {}
        for server in self.dispatcher.servers:
            try:
                listing = await self.dispatcher.get_json(server, MODELS_PATH)
                served[server.url] = served_models(listing)
            except ServiceError as error:
                server.dead = str(error)
            except ValueError as error:
                server.dead = f"not a model list ({error})"
            if server.dead is not None:
                self._log(f"skipping server {server.url}: GET {MODELS_PATH}: {server.dead}")
        if not served:
            lost = "; ".join(f"{s.url}: {s.dead}" for s in self.dispatcher.servers)
            raise ServiceError(self.redact(f"no server answered GET {MODELS_PATH} ({lost})"))
        if wanted is None:
            names = sorted({name for names in served.values() for name in names})
            if len(names) != 1:
                raise InputError(f"the servers serve {len(names)} models ({self._names(names) or 'none'}); "
                                 "choose one with --model")  # fmt: skip
            wanted = names[0]
        lacking = {url: names for url, names in served.items() if wanted not in names}
        if lacking:
            detail = "; ".join(f"{url} serves {self._names(names) or 'nothing'}" for url, names in lacking.items())
            raise InputError(f"model {short_repr(wanted)} is not served by every server ({detail})")
        return wanted

    def _names(self, names: list[str], shown: int = 5) -> str:
        """Model names a server listed, for a message: secrets masked, then each and the list cut short."""
        cut = [(n if len(n) <= 80 else n[:77] + "...") for n in map(self.redact, names[:shown])]
        return ", ".join(cut) + (f" and {len(names) - shown} more" if len(names) > shown else "")

    # ------------------------------------------------------------------------------------ captioning
    def caption(self, requests: Sequence[ImageRequest]) -> list[list[Caption]]:
        return self.submit(requests).result()

    def submit(self, requests: Sequence[ImageRequest]) -> Future[list[list[Caption]]]:
        images = [self._image_bodies(request) for request in requests]
        return asyncio.run_coroutine_threadsafe(self._caption_all(images), self._loop)

    def _image_bodies(self, request: ImageRequest) -> tuple[bytes, list[bytes]]:
        """An image's routing key and its request bodies, one per prompt, the image encoded once."""
        head, middle, tail = self._body_parts
        mime, data = sendable_image(request)
        url = b"data:" + mime.encode() + b";base64," + base64.b64encode(data)
        bodies = [b"".join((head, url, middle, json.dumps(prompt).encode(), tail)) for prompt in request.prompts]
        return image_key(str(request.path).encode() if request.path is not None else data), bodies

    async def _caption_all(self, images: list[tuple[bytes, list[bytes]]]) -> list[list[Caption]]:
        return list(await asyncio.gather(*(self._caption_image(key, bodies) for key, bodies in images)))

    async def _caption_image(self, key: bytes, bodies: list[bytes]) -> list[Caption]:
        """All of an image's prompts on one server: the first alone, then the others together once it is
        answered, when the server holds the image's prefill in its prefix cache. Prefix caches reuse only
        blocks already computed: prompts arriving together would each compute the image again. If the
        first prompt is refused, the others are not sent (the image is skipped whatever they would give)."""
        route = self.dispatcher.route(key)
        first = await self._caption_one(bodies[0], route)
        if isinstance(first, RequestFailure):
            rest: list[Caption] = [RequestFailure(f"not sent: the image's first prompt failed ({first.reason})")]
            rest *= len(bodies) - 1
        else:
            rest = list(await asyncio.gather(*(self._caption_one(body, route) for body in bodies[1:])))
        self.servers_per_image[len(route.answered_by)] += 1
        self.images_on_first_choice += route.on_first_choice
        return [first, *rest]

    async def _caption_one(self, body: bytes, route: Route | None) -> Caption:
        outcome = await self.dispatcher.post(CHAT_PATH, body, route, self._read_caption)
        return RequestFailure(outcome.reason) if isinstance(outcome, Refused) else outcome

    def _read_caption(self, answer: Any, server: str) -> str:
        """The caption in a chat completion, checked before it is stored: the server says it served the model
        asked for (else `WrongServer`, or with `served_model="record"` the name is recorded), the content is
        text that is not empty or whitespace, and at most `max_caption_chars` long (else `Rejected`)."""
        served = answer.get("model") if isinstance(answer, dict) else None
        served_as = None
        if isinstance(served, str) and not self._same_model(served):
            served_as = self._served_other(served, server)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise Rejected(f"{server} answered without message content")
        problem = caption_problem(content)
        if problem is None and len(content.strip()) > self.max_caption_chars:
            problem = (f"answer of {len(content.strip()):,} characters, more than --max-caption-chars "
                       f"{self.max_caption_chars:,} (the server did not keep to max_tokens "
                       f"{self.settings.max_new_tokens})")  # fmt: skip
        if problem is not None:
            raise Rejected(f"{server}: {problem}")
        return content.strip() if served_as is None else ServedCaption(content.strip(), served_as)

    def _same_model(self, served: str) -> bool:
        """Whether a server's answer names the model asked for: the same name, or it with a revision
        (`transformers serve` answers `repo@main` for `repo`)."""
        return served == self.model_id or served.partition("@")[0] == self.model_id

    def _served_other(self, served: str, server: str) -> str:
        """Refuse a server answering as another model (`WrongServer`), or with `--served-model record` log it
        once per server and name and return the name to record with the caption (masked, then cut)."""
        said = short_repr(self.redact(served))
        if self.served_model != "record":
            raise WrongServer(f"it answers as model {said} when asked for {short_repr(self.model_id)}: start it "
                              "with that model, or pass --served-model record to keep its answers and record "
                              "the name")  # fmt: skip
        masked = self.redact(served)
        recorded = masked if len(masked) <= MAX_SERVED_NAME_CHARS else masked[: MAX_SERVED_NAME_CHARS - 3] + "..."
        if recorded not in self.served_as.setdefault(server, collections.Counter()):
            self._log(f"server {server} answers as model {said} when asked for {short_repr(self.model_id)}; "
                      "keeping its answers and recording the name in each caption's shard "
                      "(--served-model record)")  # fmt: skip
        self.served_as[server][recorded] += 1
        return recorded

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def mean_servers_per_image(self) -> float:
        """How many servers answered each image's prompts, on average (1.0 when every image stayed on one)."""
        images = sum(self.servers_per_image.values())
        return sum(n * count for n, count in self.servers_per_image.items()) / images if images else 0.0

    @property
    def retries(self) -> dict[str, int]:
        """Retries so far by cause (`"429"`, `"connection lost"`...)."""
        return dict(self.dispatcher.retries)

    def close(self) -> None:
        """Cancel what is still in flight, close every connection and end the loop's thread."""
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.dispatcher.close()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
