"""The small interface every captioning engine implements, and what they share."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from vlmkd.config import StageConfig, in_range
from vlmkd.errors import InputError

# Weight files are fingerprinted by size and their first and last MiB: cheap for 10-GB checkpoints, and two
# checkpoints that differ anywhere but in the middle of every file still get different fingerprints.
_SAMPLE_BYTES = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".engine", ".npz", ".gguf")
_FULL_HASH_BYTES = 16 << 20  # configs, tokenizers, chat templates: hashed in full


# What `CaptionEngine.estimated_tokens` assumes of engines that know nothing better: an image as LLaVA-1.5's
# 576 tokens, and about four characters of prompt text per token.
DEFAULT_IMAGE_TOKENS = 576
CHARACTERS_PER_TOKEN = 4
T = TypeVar("T")


@dataclass(frozen=True)
class ImageRequest:
    """One image to caption once per prompt: an RGB image and the rendered prompt texts (before any chat
    template), in prompt-set order.

    `path` is the image's file when it came from one: engines that send images elsewhere (`openai`) send
    the file's own bytes instead of re-encoding `image`.
    """

    image: Image.Image
    prompts: tuple[str, ...]
    path: Path | None = None


@dataclass(frozen=True)
class RequestFailure:
    """A request an engine could not caption (a server refused it for good): the reason, one line.

    The runner skips the request's image and records it like an unreadable one."""

    reason: str


class ServedCaption(str):
    """A caption from a server whose answer named another model than the one asked for, kept because the user
    passed `--served-model record`: the text, and in `served_as` the model name the answer gave (secrets masked,
    at most `MAX_SERVED_NAME_CHARS` characters). The runner stores the name in the caption's shard
    (`vlmkd.served_as`, read back by `CaptionStore.served_as`)."""

    served_as: str

    def __new__(cls, text: str, served_as: str) -> ServedCaption:
        caption = super().__new__(cls, text)
        caption.served_as = served_as
        return caption


MAX_SERVED_NAME_CHARS = 256  # a server names its model; a hostile one could send a megabyte as the name
Caption = str | RequestFailure


@dataclass(frozen=True)
class GenerationSettings(StageConfig):
    """Decoding settings; part of a caption store's identity. Greedy unless `do_sample`."""

    max_new_tokens: int = field(default=32, metadata=in_range(ge=1))
    do_sample: bool = False
    temperature: float = field(default=1.0, metadata=in_range(ge=0))
    top_p: float = field(default=1.0, metadata=in_range(gt=0, le=1))
    num_beams: int = field(default=1, metadata=in_range(ge=1))
    seed: int = field(default=0, metadata=in_range(ge=0))
    dtype: str = "float32"

    def check(self) -> None:
        # Ranges of single settings are field metadata (`in_range`); this one involves two.
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"sampling needs temperature > 0, got {self.temperature}")

    def record(self) -> dict[str, Any]:
        """The manifest form: only the fields that change the captions."""
        record = asdict(self)
        if not self.do_sample:
            for name in ("temperature", "top_p", "seed"):
                record.pop(name)
        return record


class CaptionEngine(ABC):
    """Turns batches of images, each with all its prompts, into caption strings: one list per image, one
    caption per prompt, in order.

    Engines are built as `Engine(model, settings, *, device, trust_remote_code)` by `load_engine`, after
    `Engine.check_available()` has raised if a dependency is missing (before any store is touched).
    """

    name: str
    model_id: str
    settings: GenerationSettings
    # Whether the store identity (model, generation record) is known only once the engine is loaded, as for
    # servers that report their model; such engines must load quickly, since they load before the store check.
    describes_itself: bool = False
    # Requests the runner keeps submitted beyond the batch it waits for: 0 for engines that compute in
    # `caption` itself, about twice the concurrency for engines that wait on servers.
    submit_ahead: int = 0

    @classmethod  # noqa: B027 - optional hook, most engines need nothing beyond vlmkd
    def check_available(cls) -> None:
        """Raise `MissingDependencyError` (with the install hint) when this engine cannot run here."""

    @abstractmethod
    def caption(self, requests: Sequence[ImageRequest]) -> list[list[Caption]]:
        """For each request, one caption per prompt in order, stripped of the prompt and surrounding
        whitespace; a `RequestFailure` for a prompt the engine could not caption (in-process engines never
        return one)."""

    def submit(self, requests: Sequence[ImageRequest]) -> Future[list[list[Caption]]]:
        """`caption(requests)` as a future. Engines that work elsewhere (servers) return at once, so the
        runner can keep `submit_ahead` more captions going; the default computes before returning."""
        captions = self.caption(requests)
        future: Future[list[list[Caption]]] = Future()
        future.set_result(captions)
        return future

    def estimated_tokens(self, request: ImageRequest) -> int:
        """About how many tokens captioning `request` occupies (the runner fills batches up to a token
        budget with it). The default prices every prompt as its own sequence: `DEFAULT_IMAGE_TOKENS`, the
        prompt text at `CHARACTERS_PER_TOKEN`, and `max_new_tokens`; engines that know better override it."""
        new_tokens = self.settings.max_new_tokens
        return sum(
            DEFAULT_IMAGE_TOKENS + len(prompt) // CHARACTERS_PER_TOKEN + 1 + new_tokens for prompt in request.prompts
        )

    def model_fingerprint(self) -> str:
        return model_fingerprint(self.model_id)

    def generation_record(self) -> dict[str, Any]:
        """The generation settings as a caption store's manifest records them."""
        return self.settings.record()

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to release
        """Release the model (GPU memory, worker processes)."""


def model_fingerprint(model: str | Path) -> str:
    """Identity of a model: for a local directory a hash of its files (weights by size and sampled bytes,
    the rest in full), so the same weights match wherever they live; otherwise the model name itself."""
    path = Path(model)
    if not path.is_dir():
        return str(model)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.relative_to(path).as_posix().startswith("."))
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\t{size}\n".encode())
        with open(file, "rb") as handle:
            if file.suffix not in _WEIGHT_SUFFIXES and size <= _FULL_HASH_BYTES:
                digest.update(handle.read())
                continue
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(max(size - _SAMPLE_BYTES, 0))
            digest.update(handle.read(_SAMPLE_BYTES))
    return f"sha256:{digest.hexdigest()[:16]}"


def per_prompt(requests: Sequence[ImageRequest]) -> list[tuple[ImageRequest, str]]:
    """Every (request, prompt) pair of `requests`, image by image: for engines that caption prompts one by one."""
    return [(request, prompt) for request in requests for prompt in request.prompts]


def per_image(items: Sequence[T], requests: Sequence[ImageRequest]) -> list[list[T]]:
    """`items` given one per (request, prompt) pair, in `per_prompt` order, grouped back into one list per request."""
    if len(items) != sum(len(request.prompts) for request in requests):
        raise RuntimeError(f"{len(items)} captions for {sum(len(r.prompts) for r in requests)} prompts")
    grouped, start = [], 0
    for request in requests:
        grouped.append(list(items[start : start + len(request.prompts)]))
        start += len(request.prompts)
    return grouped


def strip_prompt(text: str, prompt_text: str) -> str:
    """Caption text without an echoed prompt prefix (BLIP-style models repeat the prompt), stripped."""
    text = text.strip()
    prompt_text = prompt_text.strip()
    if prompt_text and text.startswith(prompt_text):
        text = text[len(prompt_text) :]
    return text.strip()
