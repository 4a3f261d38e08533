"""A captioning engine for tests that scripts its answers, and the prompt set it is used with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vlmkd.caption.engines import CaptionEngine, GenerationSettings, ImageRequest
from vlmkd.caption.prompts import Prompt, PromptSet

PROMPTS = PromptSet("two", (Prompt("G", "Describe this image."), Prompt("T2", "Describe the {label}.")))


class ScriptedEngine(CaptionEngine):
    """An in-process engine (vlmkd's own interface) whose answer for (image path, prompt) is `answer(...)`.
    Named like the hf engine so the runner's registry check passes; its model id says what it is."""

    name = "hf"

    def __init__(self, answer: Callable[[str, str], str], model_id: str = "scripted") -> None:
        self.answer = answer
        self.model_id = model_id
        self.settings = GenerationSettings(max_new_tokens=4)

    def caption(self, requests: Sequence[ImageRequest]) -> list[list[str]]:
        return [[self.answer(Path(r.path).name, prompt) for prompt in r.prompts] for r in requests]


def plain(name: str, prompt: str) -> str:
    return f"{prompt} of {name}"
