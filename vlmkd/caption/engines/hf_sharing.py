"""How the `hf` engine shares one image's work among its prompts, architecture by architecture.

- `PrefixCache` (LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3, SmolVLM, BLIP-2 with a decoder-only text model): the
  chat template puts the image before the prompt text, so every prompt of an image starts with the same tokens
  (template, image tokens, any common prompt words). Per image: one preprocessing, one vision-tower pass and
  one prefill of that shared prefix, batched across images; the KV cache is copied to every prompt's row and
  `generate` continues from it, prefilling only each prompt's own tokens. Rows keep each image's prefix where
  the batch put it and right-align the prompts' own tokens, so the padding between them is masked and every
  real token keeps the position (from the attention mask, or Qwen2-VL's multimodal rotary positions, whose
  per-row offsets are computed by the model's own `get_rope_index` on the final rows) it has in a row of its own.
- `VisionOnce` (PaliGemma, BLIP, BLIP-2 with an encoder-decoder text model): the text cannot be shared exactly
  (PaliGemma's prefix attends bidirectionally, so image tokens see the prompt; BLIP's text decoder and T5 read
  the image through cross-attention or an encoder over image and prompt), but one preprocessing and one
  vision-tower pass per image are: the tower's output is repeated for the image's prompts. Rows are padded where
  the processor pads them (BLIP-2's between its query tokens and the text), since T5 and BLIP see positions.
- `PerPrompt` (any other model, a processor whose ids cannot be derived): every (image, prompt) is its own
  request, as before image-level sharing existed. (Beam search keeps the sharing: `PrefixCache` repeats the
  cache for the beams; `VisionOnce`'s tower then sees beam-expanded rows and runs on all of them.)

Greedy captions are the same as `PerPrompt`'s, up to float rounding: the tests compare them on every
architecture and allow a different token only where the two paths' top-two logits are within 1e-4.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vlmkd.caption.engines.base import ImageRequest, per_prompt
from vlmkd.caption.engines.hf_inputs import ImagePrompts, image_level, left_padded, unpadded_rows

# Where the vision tower and the text transformer of each architecture live (first match wins): the vision tower
# for `VisionOnce`, both for instruments that count the work (`vlmkd.testing.work_counters`).
VISION_TOWERS = ("vision_tower", "model.vision_tower", "vision_model", "model.vision_model", "visual", "model.visual")
TEXT_MODELS = ("language_model", "model.language_model", "model.text_model", "text_decoder")


@dataclass(frozen=True)
class Generation:
    """What `generate` returned for a batch: one row per (image, prompt), image by image, prompts in order."""

    input_ids: Any  # the rows as `generate` saw them: what its output echoes
    sequences: Any
    logits: tuple[Any, ...] | None = None  # per generated step, (rows, vocabulary), when asked for


class Captioner(Protocol):
    """What a sharing uses of the engine that runs it (`vlmkd.caption.engines.hf.HFEngine`)."""

    model: Any
    processor: Any
    pad_token_id: int
    image_token_id: int | None

    def model_text(self, prompt: str) -> str: ...

    def plain_ids(self, text: str) -> list[int]: ...

    def on_device(self, inputs: dict[str, Any]) -> dict[str, Any]: ...

    def fall_back(self, requests: Sequence[ImageRequest], kwargs: dict[str, Any], reason: str) -> Generation: ...


class Sharing(ABC):
    """One way of captioning a batch of images with all their prompts."""

    shares: str  # what is computed once per image, for notices and docs

    @abstractmethod
    def generate(self, engine: Captioner, requests: Sequence[ImageRequest], kwargs: dict[str, Any]) -> Generation:
        """Run `generate` (with `kwargs`) over every (image, prompt) of `requests`."""


class PerPrompt(Sharing):
    """Every (image, prompt) is its own request: processor, vision tower and prefill once per prompt."""

    shares = "nothing (every prompt is its own request)"

    def generate(self, engine: Captioner, requests: Sequence[ImageRequest], kwargs: dict[str, Any]) -> Generation:
        pairs = per_prompt(requests)
        # One image list per prompt: processors that take several images per prompt (SmolVLM2, Idefics3) read a
        # flat list as one sample's images; the others give the same inputs either way.
        inputs = engine.processor(
            images=[[request.image] for request, _ in pairs],
            text=[engine.model_text(prompt) for _, prompt in pairs],
            return_tensors="pt",
            padding="longest",
        )
        inputs = engine.on_device(dict(inputs))
        return _generate(engine.model.generate, inputs["input_ids"], inputs, kwargs)


@dataclass(frozen=True)
class ImageBatch:
    """A batch of images processed once each: every image's prompts as token ids, and the image tensors."""

    prompts: list[ImagePrompts]
    images: dict[str, Any]  # image-level processor outputs, on the model's device

    @classmethod
    def build(cls, engine: Captioner, requests: Sequence[ImageRequest]) -> ImageBatch | None:
        """None when some image's prompt ids cannot be derived from its first prompt's."""
        texts = [[engine.model_text(prompt) for prompt in request.prompts] for request in requests]
        inputs = engine.processor(
            images=[[request.image] for request in requests],
            text=[image_texts[0] for image_texts in texts],
            return_tensors="pt",
            padding="longest",
        )
        rows, extras = unpadded_rows(inputs)
        prompts = [
            ImagePrompts.build(ids, extra, image_texts, engine.plain_ids, engine.image_token_id)
            for ids, extra, image_texts in zip(rows, extras, texts, strict=True)
        ]
        if any(p is None for p in prompts):
            return None
        return cls(prompts, engine.on_device(image_level(inputs)))  # type: ignore[arg-type]

    def image_of_row(self) -> Any:
        """For each (image, prompt) row, its image's index in the batch."""
        import torch

        return torch.tensor([i for i, p in enumerate(self.prompts) for _ in p.ids], dtype=torch.long)


class PrefixCache(Sharing):
    """One prefill of each image's shared prefix, its KV cache copied to every prompt's row (see module doc).

    `continuation`: the submodule that generates from the cache (the model itself, or BLIP-2's text model)."""

    shares = "the preprocessing, the vision-tower pass and the prefill of the image prefix"

    def __init__(self, continuation: str | None = None) -> None:
        self.continuation = continuation

    def generate(self, engine: Captioner, requests: Sequence[ImageRequest], kwargs: dict[str, Any]) -> Generation:
        import torch
        from transformers import DynamicCache

        batch = ImageBatch.build(engine, requests)
        lengths = [None] if batch is None else [p.prefix_length(engine.image_token_id) for p in batch.prompts]
        if batch is None or None in lengths:
            return engine.fall_back(requests, kwargs, "its prompts' token ids do not share the image prefix")
        model = engine.model
        text_model = model.get_submodule(self.continuation) if self.continuation else model
        cache_key = cache_keyword(text_model)
        device = model.device

        # 1. The shared prefixes, left-padded into one batch with the images: vision tower and prefill once each.
        prefixes = [p.ids[0][:n] for p, n in zip(batch.prompts, lengths, strict=True)]
        prefix_ids, prefix_mask = left_padded(prefixes, engine.pad_token_id)
        extras = {
            name: left_padded([p.first_extras[name][:n] for p, n in zip(batch.prompts, lengths, strict=True)], 0)[0]
            for name in batch.prompts[0].first_extras
        }
        cache = DynamicCache(config=model.config)
        prefill: dict[str, Any] = {cache_key: cache, "use_cache": True, **batch.images}
        prefill |= {name: value.to(device) for name, value in extras.items()}
        positions = self.prefill_positions(prefix_mask)
        if positions is not None:
            prefill["position_ids"] = positions.to(device)
        if "logits_to_keep" in inspect.signature(text_model.forward).parameters:
            prefill["logits_to_keep"] = 1  # only the continuation's logits are used
        model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), **prefill)

        # 2. Every prompt's row: its image's prefix (as padded above), padding, then the prompt's own tokens.
        image_of_row = batch.image_of_row()
        cache.batch_select_indices(image_of_row.to(device))  # copies: each row's cache grows on its own
        if kwargs.get("num_beams", 1) > 1:
            cache.batch_repeat_interleave(kwargs["num_beams"])  # `generate` expands the rows, not a given cache
        suffixes = [ids[n:] for p, n in zip(batch.prompts, lengths, strict=True) for ids in p.ids]
        suffix_ids, suffix_mask = left_padded(suffixes, engine.pad_token_id)
        rows = torch.cat([prefix_ids[image_of_row], suffix_ids], dim=1).to(device)
        mask = torch.cat([prefix_mask[image_of_row], suffix_mask], dim=1).to(device)
        self.before_continuation(model, rows, mask, batch, image_of_row)
        inputs = {"input_ids": rows, "attention_mask": mask, cache_key: cache}
        return _generate(text_model.generate, rows, inputs, kwargs)

    def prefill_positions(self, mask: Any) -> Any:
        """Position ids of the left-padded prefixes, as `generate` derives them from the attention mask."""
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def before_continuation(self, model: Any, rows: Any, mask: Any, batch: ImageBatch, image_of_row: Any) -> None:
        """Hook for models that keep position state between forward calls."""


class MropePrefixCache(PrefixCache):
    """`PrefixCache` for Qwen2-VL: the model computes the prefixes' multimodal rotary positions itself, and each
    row's position offset for the tokens after the cache (`rope_deltas`, kept on the model between calls) comes
    from its own `get_rope_index` on the final rows, whose meaning differs between transformers 4.57 and 5."""

    def prefill_positions(self, mask: Any) -> Any:
        return None

    def before_continuation(self, model: Any, rows: Any, mask: Any, batch: ImageBatch, image_of_row: Any) -> None:
        base = model.model
        grid = batch.images["image_grid_thw"][image_of_row.to(rows.device)]
        arguments = {"input_ids": rows, "image_grid_thw": grid, "attention_mask": mask}
        if "mm_token_type_ids" in inspect.signature(base.get_rope_index).parameters:  # transformers >= 5
            arguments["mm_token_type_ids"] = (rows == model.config.image_token_id).int()
        _, base.rope_deltas = base.get_rope_index(**arguments)


class VisionOnce(Sharing):
    """One preprocessing and one vision-tower pass per image, repeated for its prompts; the text per prompt.

    `pad_after_image_tokens`: pad rows after their leading image tokens, not before, as BLIP-2's processor does
    (T5's relative positions see where the padding is)."""

    shares = "the preprocessing and the vision-tower pass"

    def __init__(self, pad_after_image_tokens: bool = False) -> None:
        self.pad_after_image_tokens = pad_after_image_tokens

    def generate(self, engine: Captioner, requests: Sequence[ImageRequest], kwargs: dict[str, Any]) -> Generation:
        batch = ImageBatch.build(engine, requests)
        if batch is None:
            return engine.fall_back(requests, kwargs, "its prompts' token ids cannot be derived from the first's")
        image_of_row = batch.image_of_row()
        rows = [ids for p in batch.prompts for ids in p.ids]
        at = [_leading(row, engine.image_token_id) for row in rows] if self.pad_after_image_tokens else None
        input_ids, mask = left_padded(rows, engine.pad_token_id, at=at)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        for name in batch.prompts[0].first_extras:  # per-token extras that are constant over a row (token types)
            values = [set(p.first_extras[name]) for p in batch.prompts]
            if any(len(v) != 1 for v in values):
                return engine.fall_back(requests, kwargs, f"its per-token input {name!r} varies along the prompt")
            constant = [min(v) for v in values]
            inputs[name] = left_padded([[c] * len(ids) for c, p in zip(constant, batch.prompts, strict=True)
                                        for ids in p.ids], 0, at=at)[0]  # fmt: skip
        n_images = len(batch.prompts)
        if any(value.shape[0] != n_images for value in batch.images.values()):
            return engine.fall_back(requests, kwargs, "its image tensors are not one row per image")
        on_device = image_of_row.to(engine.model.device)
        inputs |= {name: value[on_device] for name, value in batch.images.items()}
        inputs = engine.on_device(inputs)
        with vision_once(vision_tower(engine.model), image_of_row):
            return _generate(engine.model.generate, inputs["input_ids"], inputs, kwargs)


def sharing_for(model: Any) -> Sharing | None:
    """The sharing that is exact for `model`'s architecture, or None when none is known to be."""
    config = model.config
    kind = type(config).model_type  # not `config.model_type`: transformers 4.57's Qwen2-VL config answers its text's
    if kind == "blip-2":
        if config.use_decoder_only_language_model:
            return PrefixCache("language_model")
        return VisionOnce(pad_after_image_tokens=True)
    return ARCHITECTURES.get(kind)


ARCHITECTURES: dict[str, Sharing] = {
    "llava": PrefixCache(),
    "llava_next": PrefixCache(),
    "idefics3": PrefixCache(),
    "smolvlm": PrefixCache(),
    "qwen2_vl": MropePrefixCache(),
    "paligemma": VisionOnce(),
    "blip": VisionOnce(),
}


def cache_keyword(module: Any) -> str:
    """The name a model's forward takes its KV cache by: `cache` from transformers 5.25, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def find_submodule(model: Any, candidates: Sequence[str]) -> Any:
    """The first of `candidates` (dotted attribute paths) that `model` has, or None."""
    for name in candidates:
        with contextlib.suppress(AttributeError):
            return model.get_submodule(name)
    return None


def vision_tower(model: Any) -> Any:
    tower = find_submodule(model, VISION_TOWERS)
    if tower is None:
        raise RuntimeError(f"{type(model).__name__}: no vision tower among {', '.join(VISION_TOWERS)}")
    return tower


@contextlib.contextmanager
def vision_once(tower: Any, image_of_row: Any) -> Iterator[None]:
    """While active, a call of `tower` on one row of pixels per (image, prompt) runs it on each image's first row
    only and repeats its outputs for the image's other rows."""
    import torch

    firsts = torch.tensor(sorted({int(image): row for row, image in reversed(list(enumerate(image_of_row)))}.values()))
    original = tower.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if pixels is None or pixels.shape[0] != len(image_of_row):
            return original(*args, **kwargs)
        unique = pixels[firsts.to(pixels.device)]
        if "pixel_values" in kwargs:
            outputs = original(*args, **{**kwargs, "pixel_values": unique})
        else:
            outputs = original(unique, *args[1:], **kwargs)
        return _repeat_rows(outputs, image_of_row.to(pixels.device))

    tower.forward = forward
    try:
        yield
    finally:
        del tower.forward


def _repeat_rows(value: Any, index: Any) -> Any:
    """`value` (a tensor, or a model output / tuple holding tensors) with its rows picked by `index`."""
    import torch

    if isinstance(value, torch.Tensor):
        return value[index]
    if isinstance(value, tuple) and not hasattr(value, "keys"):
        return type(value)(_repeat_rows(item, index) for item in value)
    if hasattr(value, "keys"):
        for key in list(value.keys()):
            value[key] = _repeat_rows(value[key], index)
        return value
    return value


def _leading(row: Sequence[int], token: int | None) -> int:
    """How many times `row` starts with `token`."""
    count = 0
    while count < len(row) and row[count] == token:
        count += 1
    return count


def _generate(generate: Any, input_ids: Any, inputs: dict[str, Any], kwargs: dict[str, Any]) -> Generation:
    output = generate(**inputs, **kwargs)
    if hasattr(output, "sequences"):
        return Generation(input_ids, output.sequences, tuple(output.logits) if output.logits is not None else None)
    return Generation(input_ids, output)
