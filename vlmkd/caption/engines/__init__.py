"""Captioning engines behind one interface, registered by name in `ENGINES` (`--engine` reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkd.caption.engines.base import (
    Caption,
    CaptionEngine,
    GenerationSettings,
    ImageRequest,
    RequestFailure,
    model_fingerprint,
)
from vlmkd.registry import Registry

ENGINES: Registry[type[CaptionEngine]] = Registry("engine")
ENGINES.register("hf", "vlmkd.caption.engines.hf:HFEngine", "transformers image-text-to-text models")
ENGINES.register("trt", "vlmkd.caption.engines.trt:TRTEngine", "TensorRT-LLM's LLM API on a GPU")
ENGINES.register(
    "openai",
    "vlmkd.caption.engines.openai:OpenAIEngine",
    "OpenAI-compatible chat servers given by --api-base (trtllm-serve, vllm serve, SGLang, transformers serve)",
)


def check_engine(name: str) -> None:
    """Fail early (before any store is touched) if engine `name` is unknown or cannot run here."""
    ENGINES.get(name).check_available()


def load_engine(
    name: str,
    model: str | Path,
    settings: GenerationSettings,
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    **options: Any,
) -> CaptionEngine:
    """Load the engine registered as `name` with `model` (`device` is where engines that choose put it);
    `options` go to engines that take more (openai: `api_bases`, `concurrency`, `api_key_env`, `policy`, `log`)."""
    engine = ENGINES.get(name)
    engine.check_available()
    return engine(model, settings, device=device, trust_remote_code=trust_remote_code, **options)


__all__ = [
    "ENGINES",
    "Caption",
    "CaptionEngine",
    "GenerationSettings",
    "ImageRequest",
    "RequestFailure",
    "check_engine",
    "load_engine",
    "model_fingerprint",
]
