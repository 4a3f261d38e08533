"""Captioning engines behind one interface, registered by name in `ENGINES` (`--engine` reads it)."""

from __future__ import annotations

from pathlib import Path

from vlmkd.caption.engines.base import CaptionEngine, GenerationSettings, Request, model_fingerprint
from vlmkd.registry import Registry

ENGINES: Registry[type[CaptionEngine]] = Registry("engine")
ENGINES.register("hf", "vlmkd.caption.engines.hf:HFEngine", "transformers image-text-to-text models")
ENGINES.register("trt", "vlmkd.caption.engines.trt:TRTEngine", "TensorRT-LLM's LLM API on a GPU")


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
) -> CaptionEngine:
    """Load the engine registered as `name` with `model` (`device` is where engines that choose put it)."""
    engine = ENGINES.get(name)
    engine.check_available()
    return engine(model, settings, device=device, trust_remote_code=trust_remote_code)


__all__ = [
    "ENGINES",
    "CaptionEngine",
    "GenerationSettings",
    "Request",
    "check_engine",
    "load_engine",
    "model_fingerprint",
]
