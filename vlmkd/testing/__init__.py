"""Fixtures for tests, benchmarks and the demo, kept apart from the library (which never imports them): tiny
randomly initialised VLMs (`tiny_models`, `vlmkd models make-tiny`) and a loopback OpenAI-compatible stub
server (`openai_stub`)."""

from vlmkd.testing.tiny_models import (
    build_tiny_blip,
    build_tiny_blip2,
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_paligemma,
    build_tiny_qwen2_vl,
    build_tiny_smolvlm,
    make_tiny_vlm,
)

__all__ = [
    "build_tiny_blip",
    "build_tiny_blip2",
    "build_tiny_idefics3",
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_paligemma",
    "build_tiny_qwen2_vl",
    "build_tiny_smolvlm",
    "make_tiny_vlm",
]
