"""The `hf` engine: any local transformers image-text-to-text model, batched `generate` with left padding."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmkd.caption.engines.base import (
    CaptionEngine,
    GenerationSettings,
    ImageRequest,
    per_image,
    per_prompt,
    strip_prompt,
)
from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.quiet import transformers_bars_off

DTYPES = ("float32", "float16", "bfloat16", "auto")
_PIP_INSTALL = re.compile(r"pip install ([A-Za-z0-9_.\-\[\]]+)")


def missing_package_message(model: str | Path, error: ImportError) -> str:
    """One line naming the package a model's processor or code needs (from transformers' hint, else the
    module that failed to import)."""
    hint = _PIP_INSTALL.search(str(error))
    package = hint.group(1).rstrip(".") if hint else error.name
    if package:
        return f"{model}: this model needs the package {package!r}, which is not installed: pip install {package}"
    return f"{model}: this model needs a package that is not installed ({' '.join(str(error).split())})"


class HFEngine(CaptionEngine):
    """Captions with `AutoModelForImageTextToText` + `AutoProcessor` loaded from a directory (or cached id).

    Prompts go through the processor's chat template when it has one (LLaVA, Qwen2-VL...) and are used as
    a text prefix otherwise (BLIP). Batches are left-padded so every row's generation starts at the end.
    """

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        settings: GenerationSettings,
        *,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if settings.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
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
            raise InputError(f"{model}: cannot load an image-text-to-text model and processor ({error})") from None
        self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise InputError(f"{model}: the processor has no tokenizer")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = getattr(self.processor, "chat_template", None)
        self._texts: dict[str, str] = {}
        self._generate_kwargs = self._make_generate_kwargs()

    def _make_generate_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample}
        kwargs["num_beams"] = s.num_beams
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=None)
        else:  # override sampling defaults a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.model.generation_config.pad_token_id is None:
            kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        return kwargs

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

    def caption(self, requests: Sequence[ImageRequest]) -> list[list[str]]:
        import torch

        if not requests:
            return []
        pairs = per_prompt(requests)
        texts = [self.model_text(prompt) for _, prompt in pairs]
        # One image list per prompt: processors that take several images per prompt (SmolVLM2, Idefics3)
        # read a flat list as one sample's images; the others give the same inputs either way.
        inputs = self.processor(
            images=[[request.image] for request, _ in pairs], text=texts, return_tensors="pt", padding="longest"
        )
        inputs = inputs.to(device=self.device, dtype=self.model.dtype)
        if self.settings.do_sample:
            torch.manual_seed(self.settings.seed)  # same batch, same captions
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs)
        return per_image(self._decode(inputs["input_ids"], output), requests)

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
