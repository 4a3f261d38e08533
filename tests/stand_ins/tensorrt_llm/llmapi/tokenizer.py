"""Stand-in for tensorrt_llm/llmapi/tokenizer.py: `TransformersTokenizer`, the wrapper `LLM.tokenizer` holds
(its `.tokenizer` is the Hugging Face tokenizer; upstream `apply_chat_template` unwraps it the same way)."""

from __future__ import annotations

from typing import Any


class TransformersTokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id
