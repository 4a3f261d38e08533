"""Stand-in for tensorrt_llm/llmapi/llm_args.py: `KvCacheConfig`.

Upstream it is a pydantic `StrictBaseModel` (unknown fields are a validation error): the keyword-only fields
below, with their defaults, are the leading fields of `tensorrt_llm.llmapi.KvCacheConfig` as published in the
TensorRT-LLM 1.3.0rc27 and 1.4.0rc2 API references (generated from those releases' llm_args.py); the fields
after `tokens_per_block` (Mamba state, KV-cache manager v2 switches) are left out, so passing one fails here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list[int] | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    host_cache_size: int | None = None
    disk_cache_size: int | None = None
    disk_cache_path: str | None = None
    cross_kv_cache_fraction: float | None = None
    secondary_offload_min_priority: int | None = None
    event_buffer_max_size: int = 0
    attention_dp_events_gather_period_ms: int = 5
    kv_events_config: Any = None
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False
    max_gpu_total_bytes: int = 0
    iteration_stats_interval: int = 1
    dtype: str = "auto"
    tokens_per_block: int = 32

    def __post_init__(self) -> None:
        fraction = self.free_gpu_memory_fraction
        if fraction is not None and not 0 <= fraction <= 1:
            raise ValueError(f"free_gpu_memory_fraction must be in [0, 1], got {fraction}")
