"""The `hf` engine: any local transformers image-text-to-text model, batched `generate` with left padding.

Each image is captioned once for all its prompts where the architecture allows it exactly (see
`vlmkd.caption.engines.hf_sharing`): one preprocessing, one vision-tower pass and, for LLaVA-style models, one
prefill of the image prefix, the prompts continuing from copies of its KV cache.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmkd.caption.engines.base import CaptionEngine, GenerationSettings, ImageRequest, per_image, strip_prompt
from vlmkd.caption.engines.hf_inputs import ImagePrompts, unpadded_rows
from vlmkd.caption.engines.hf_sharing import Generation, PerPrompt, Sharing, sharing_for
from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.quiet import transformers_bars_off

DTYPES = ("float32", "float16", "bfloat16", "auto")
_PIP_INSTALL = re.compile(r"pip install ([A-Za-z0-9_.\-\[\]]+)")
_HUB_NAME = r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"  # hub names neither start nor end with "." or "-"
_HUB_ID = re.compile(rf"(?:{_HUB_NAME}/)?{_HUB_NAME}")
_SIZES_KEPT = 4096  # image sizes whose token counts `estimated_tokens` remembers


def missing_package_message(model: str | Path, error: ImportError) -> str:
    """One line naming the package a model's processor or code needs (from transformers' hint, else the
    module that failed to import)."""
    hint = _PIP_INSTALL.search(str(error))
    package = hint.group(1).rstrip(".") if hint else error.name
    if package:
        return f"{model}: this model needs the package {package!r}, which is not installed: pip install {package}"
    return f"{model}: this model needs a package that is not installed ({' '.join(str(error).split())})"


def check_model_location(model: str | Path) -> None:
    """Raise `InputError` (one line) when `model` names a local path that is not a model folder: missing, a file,
    or a folder without `config.json`. Names shaped like hub ids (`org/name`) that are not local folders are left
    to the loader (a model in the local Hugging Face cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{model}: not a model folder (no config.json in it)")
    elif path.exists():
        raise InputError(f"{model}: not a directory (a model is a folder with config.json)")
    elif not _HUB_ID.fullmatch(str(model)):
        raise InputError(f"{model}: directory not found")


class HFEngine(CaptionEngine):
    """Captions with `AutoModelForImageTextToText` + `AutoProcessor` loaded from a directory (or cached id).

    Prompts go through the processor's chat template when it has one (LLaVA, Qwen2-VL...) and are used as
    a text prefix otherwise (BLIP). Batches are left-padded so every row's generation starts at the end.
    `share_image_work=False` captions every (image, prompt) as its own request (the reference path).
    """

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        settings: GenerationSettings,
        *,
        device: str = "cpu",
        trust_remote_code: bool = False,
        share_image_work: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if settings.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
        check_model_location(model)
        self.model_id = str(model)
        self.settings = settings
        self.device = torch.device(device)
        dtype = settings.dtype if settings.dtype == "auto" else getattr(torch, settings.dtype)
        try:
            with transformers_bars_off():
                self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
                self.model = AutoModelForImageTextToText.from_pretrained(
                    model, dtype=dtype, trust_remote_code=trust_remote_code
                )
        except ImportError as error:  # before OSError: ModuleNotFoundError is no OSError, but be explicit
            raise MissingDependencyError(missing_package_message(model, error)) from None
        except (OSError, ValueError, KeyError) as error:
            reason = " ".join(str(error).split())  # transformers' messages span several lines
            raise InputError(f"{model}: cannot load an image-text-to-text model and processor ({reason})") from None
        self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise InputError(f"{model}: the processor has no tokenizer")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_token_id: int = self.tokenizer.pad_token_id
        config = self.model.config
        self.image_token_id: int | None = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
        self.chat_template = getattr(self.processor, "chat_template", None)
        self._texts: dict[str, str] = {}
        self._plain_ids: dict[str, list[int]] = {}
        self._image_tokens: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._notices: set[str] = set()
        self._generate_kwargs = self._make_generate_kwargs()
        self.sharing: Sharing = PerPrompt()
        if share_image_work:
            sharing = sharing_for(self.model)
            if sharing is None:
                self.notice(f"model type {type(config).model_type!r} has no exact image sharing here")
            else:
                self.sharing = sharing
        self._prompt_ids_checked = isinstance(self.sharing, PerPrompt)

    def _make_generate_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample}
        kwargs["num_beams"] = s.num_beams
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=None)
        else:  # override sampling defaults a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.model.generation_config.pad_token_id is None:
            kwargs["pad_token_id"] = self.pad_token_id
        return kwargs

    # ---------------------------------------------------------------------------------------- texts and tokens
    def model_text(self, prompt: str) -> str:
        """The text the model sees for `prompt`: rendered through the chat template where there is one."""
        text = self._texts.get(prompt)
        if text is None:
            if self.chat_template:
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
                text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            else:
                text = prompt
            self._texts[prompt] = text
        return text

    def plain_ids(self, text: str) -> list[int]:
        """The tokenizer's ids of a model text, image placeholders not expanded."""
        ids = self._plain_ids.get(text)
        if ids is None:
            ids = self._plain_ids[text] = self.tokenizer(text)["input_ids"]
        return ids

    def on_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Tensors moved to the model's device, floating ones cast to its dtype."""
        return {
            k: v.to(self.device, self.model.dtype if v.is_floating_point() else None) if hasattr(v, "to") else v
            for k, v in inputs.items()
        }

    # -------------------------------------------------------------------------------------------- captioning
    def caption(self, requests: Sequence[ImageRequest]) -> list[list[str]]:
        if not requests:
            return []
        generation = self.generate(requests)
        return per_image(self._decode(generation.input_ids, generation.sequences), requests)

    def generate(self, requests: Sequence[ImageRequest], *, output_logits: bool = False) -> Generation:
        """`generate` over every (image, prompt) of `requests` with the engine's settings, sharing each image's
        work as `self.sharing` does; with `output_logits`, the raw logits of every generated step too."""
        import torch

        if not self._prompt_ids_checked:
            self._check_prompt_ids(requests[0])
        kwargs = dict(self._generate_kwargs)
        if output_logits:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        if self.settings.do_sample:
            torch.manual_seed(self.settings.seed)  # same batch, same captions
        with torch.inference_mode():
            return self.sharing.generate(self, requests, kwargs)

    def fall_back(self, requests: Sequence[ImageRequest], kwargs: dict[str, Any], reason: str) -> Generation:
        """Caption `requests` prompt by prompt, saying why once."""
        self.notice(reason)
        return PerPrompt().generate(self, requests, kwargs)

    def notice(self, reason: str) -> None:
        message = f"hf engine: {self.model_id}: {reason}; its images are captioned prompt by prompt"
        if message not in self._notices:
            self._notices.add(message)
            print(message, file=sys.stderr)

    def _check_prompt_ids(self, request: ImageRequest) -> None:
        """Once per engine: the prompt ids derived from one processor call must be the processor's own ids of
        every prompt (with the image), or the engine captions prompt by prompt from then on."""
        self._prompt_ids_checked = True
        texts = [self.model_text(prompt) for prompt in request.prompts]
        own = [unpadded_rows(self.processor(images=[[request.image]], text=[t], return_tensors="pt")) for t in texts]
        derived = ImagePrompts.build(own[0][0][0], own[0][1][0], texts, self.plain_ids, self.image_token_id)
        if derived is None or derived.ids != [ids[0] for ids, _ in own]:
            self.notice("the processor's token ids of its prompts cannot be derived from one processor call")
            self.sharing = PerPrompt()

    def _decode(self, input_ids: Any, output: Any) -> list[str]:
        """Generated text only: decoder-only models echo the input ids, BLIP-style ones the prompt text."""
        import torch

        length = input_ids.shape[1]
        if output.shape[1] >= length and torch.equal(output[:, :length], input_ids):
            texts = self.tokenizer.batch_decode(output[:, length:], skip_special_tokens=True)
            return [text.strip() for text in texts]
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return [strip_prompt(text, prompt) for text, prompt in zip(texts, prompts, strict=True)]

    # ------------------------------------------------------------------------------------------------ sizing
    def estimated_tokens(self, request: ImageRequest) -> int:
        """Tokens `request`'s rows hold in the KV cache once generated: every prompt's own row (the image's
        tokens are copied to each) plus `max_new_tokens`. An image size's token count is measured once, with
        the processor on a blank image of that size."""
        texts = [self.model_text(prompt) for prompt in request.prompts]
        image = self.image_tokens(request.image.size, texts[0])
        new_tokens = self.settings.max_new_tokens
        return sum(len(self.plain_ids(text)) + image + new_tokens for text in texts)

    def image_tokens(self, size: tuple[int, int], text: str) -> int:
        """Tokens the processor adds to `text` for an image of `size` (placeholder expansion, image tokens)."""
        from PIL import Image

        count = self._image_tokens.get(size)
        if count is None:
            inputs = self.processor(images=[[Image.new("RGB", size)]], text=[text], return_tensors="pt")
            count = inputs["input_ids"].shape[1] - len(self.plain_ids(text))
            self._image_tokens[size] = count
            if len(self._image_tokens) > _SIZES_KEPT:
                self._image_tokens.popitem(last=False)
        return count
