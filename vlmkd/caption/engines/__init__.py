"""Captioning engines behind one interface: `hf` (transformers, default) and `trt` (TensorRT-LLM)."""

from __future__ import annotations

from pathlib import Path

from vlmkd.caption.engines.base import CaptionEngine, GenerationSettings, Request, model_fingerprint
from vlmkd.errors import InputError

ENGINES = ("hf", "trt")


def check_engine(name: str) -> None:
    """Fail early (before any store is touched) if engine `name` is unknown or cannot run here."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "trt":
        from vlmkd.caption.engines.trt import import_tensorrt_llm

        import_tensorrt_llm()


def load_engine(
    name: str,
    model: str | Path,
    settings: GenerationSettings,
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> CaptionEngine:
    """Load engine `name` ("hf" or "trt") with `model`; the trt engine always runs on the GPU."""
    if name == "hf":
        from vlmkd.caption.engines.hf import HFEngine

        return HFEngine(model, settings, device=device, trust_remote_code=trust_remote_code)
    if name == "trt":
        from vlmkd.caption.engines.trt import TRTEngine

        return TRTEngine(model, settings, trust_remote_code=trust_remote_code)
    raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "CaptionEngine",
    "GenerationSettings",
    "Request",
    "check_engine",
    "load_engine",
    "model_fingerprint",
]
