"""The prompt text TensorRT-LLM gets for each (image, prompt): built by its own input loader, worked out once.

`tensorrt_llm.inputs.default_multimodal_input_loader` is the documented way to build multimodal inputs: it puts
the model type's image placeholder in the prompt and renders the chat template. It also loads the model's
processor (`AutoProcessor.from_pretrained`) on every call, ~0.1 s for a LLaVA-NeXT-sized one, which per batch
would keep a GPU idle for about an hour over ImageNet-LT. Its text depends only on the prompt and the number of
images, not on their pixels, so the loader runs once per model on a marker prompt: what surrounds the marker
is the template every prompt is put into. That is checked on the first image's own prompts (in the same loader
call); where the chat template does not insert prompts verbatim, each new prompt goes through the loader
instead (one call per batch with new prompts) and the engine says so once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from vlmkd.caption.engines.base import ImageRequest

MARKER = "VLMKD-PROMPT-MARKER"


class PromptTexts:
    """For each image request, the text TensorRT-LLM's loader makes of each of its prompts (one image each)."""

    def __init__(self, loader: Callable[..., list[dict[str, Any]]], *, tokenizer: Any, model_dir: str,
                 model_type: str) -> None:  # fmt: skip
        self._loader = loader
        self._loader_args = {"tokenizer": tokenizer, "model_dir": model_dir, "model_type": model_type}
        self.template: tuple[str, str] | None = None  # (text before the prompt, text after it), once checked
        self._checked = False
        self._texts: dict[str, str] = {}  # prompt -> loader text, where the template does not hold
        self.loader_calls = 0

    def texts(self, requests: Sequence[ImageRequest]) -> list[list[str]]:
        """One list per request: its prompts as TensorRT-LLM's loader renders them."""
        if not requests:
            return []
        if not self._checked:
            self._check(requests[0])
        if self.template is not None:
            before, after = self.template
            return [[before + prompt + after for prompt in request.prompts] for request in requests]
        new = list(dict.fromkeys(p for request in requests for p in request.prompts if p not in self._texts))
        if new:
            self._texts.update(zip(new, self._load(new, requests[0].image), strict=True))
        return [[self._texts[prompt] for prompt in request.prompts] for request in requests]

    def _check(self, request: ImageRequest) -> None:
        """Work out the template from the marker and check it on `request`'s prompts (one loader call)."""
        self._checked = True
        marked, *texts = self._load([MARKER, *request.prompts], request.image)
        if marked.count(MARKER) == 1:
            before, after = marked.split(MARKER)
            if all(text == before + prompt + after for prompt, text in zip(request.prompts, texts, strict=True)):
                self.template = (before, after)
                return
        self._texts.update(zip(request.prompts, texts, strict=True))
        print(
            "trt engine: this model's chat template does not insert prompts verbatim, so TensorRT-LLM's input "
            "loader (which loads the processor on every call) renders each new prompt",
            file=sys.stderr,
        )

    def _load(self, prompts: list[str], image: Image.Image) -> list[str]:
        self.loader_calls += 1
        inputs = self._loader(
            **self._loader_args,
            modality="image",
            prompts=prompts,
            media=[[image] for _ in prompts],
            image_data_format="pil",
        )
        if len(inputs) != len(prompts):
            raise RuntimeError(f"TensorRT-LLM's input loader built {len(inputs)} inputs for {len(prompts)} prompts")
        return [item["prompt"] for item in inputs]
