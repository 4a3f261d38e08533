"""Stand-in for tensorrt_llm/llmapi/__init__.py (the names vlmkd imports from it)."""

from tensorrt_llm.llmapi.llm import LLM, CompletionOutput, RequestOutput
from tensorrt_llm.llmapi.llm_args import KvCacheConfig
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "KvCacheConfig", "RequestOutput", "SamplingParams"]
