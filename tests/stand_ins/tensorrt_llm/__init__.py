"""A strict stand-in for TensorRT-LLM's LLM API (see tests/stand_ins/README.md): the real signatures, read from
TensorRT-LLM's source, and CPU behaviour realistic enough to run `vlmkd-caption --engine trt` end to end."""

from tensorrt_llm.llmapi import LLM, KvCacheConfig, SamplingParams

__version__ = "1.2.1+vlmkd.standin"
__all__ = ["LLM", "KvCacheConfig", "SamplingParams"]
