"""The `trt` engine: TensorRT-LLM's `LLM` API with multimodal prompts (LLaVA-NeXT, Qwen2-VL, VILA...).

TensorRT-LLM is imported lazily: everything else in vlmkd works without it, and asking for this engine
where it is absent is a `MissingDependencyError` with the install hint. Requests are built with TensorRT-LLM's
own `default_multimodal_input_loader` (model-specific image placeholders and chat template) and run through
`LLM.generate`, which batches them in flight.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from vlmkd.caption.engines.base import CaptionEngine, GenerationSettings, ImageRequest, per_image, per_prompt
from vlmkd.errors import InputError, MissingDependencyError

INSTALL_HINT = (
    "the trt engine needs TensorRT-LLM: pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com "
    "(or use an NGC TensorRT-LLM container); --engine hf works without it"
)
KV_CACHE_FRACTION = 0.6  # leave room for the vision encoder; KV-cache block reuse does not apply to images


def import_tensorrt_llm() -> ModuleType:
    """The `tensorrt_llm` module, or `MissingDependencyError` with the install hint."""
    try:
        import tensorrt_llm
    except ImportError as error:
        raise MissingDependencyError(f"{INSTALL_HINT} ({error})") from None
    return tensorrt_llm


def model_type_of(model: str | Path) -> str:
    """The Hugging Face `model_type` of a checkpoint directory (TensorRT-LLM picks placeholders by it)."""
    config = Path(model) / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{config}: cannot read the model's config ({error})") from None
    if not isinstance(model_type, str):
        raise InputError(f"{config}: no 'model_type'")
    return model_type


def sampling_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """`SamplingParams` arguments equivalent to `settings` (greedy when neither top-k nor top-p is set)."""
    kwargs: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "n": 1}
    if settings.num_beams > 1:
        kwargs.update(use_beam_search=True, best_of=settings.num_beams)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0, seed=settings.seed)
    return kwargs


def llm_kwargs(model: str | Path, settings: GenerationSettings, kv_cache_config: Any, trust_remote_code: bool) -> dict:
    """`LLM(...)` constructor arguments."""
    kwargs: dict[str, Any] = {
        "model": str(model),
        "dtype": settings.dtype,
        "trust_remote_code": trust_remote_code,
        "kv_cache_config": kv_cache_config,
    }
    if settings.num_beams > 1:
        kwargs["max_beam_width"] = settings.num_beams
    return kwargs


def build_inputs(
    requests: Sequence[ImageRequest],
    *,
    loader: Callable[..., list[dict[str, Any]]],
    tokenizer: Any,
    model_dir: str,
    model_type: str,
    trust_remote_code: bool,
) -> list[dict[str, Any]]:
    """Prompt dicts (`prompt` + `multi_modal_data`) for `LLM.generate`, one per (request, prompt), in order."""
    pairs = per_prompt(requests)
    inputs = loader(
        tokenizer=tokenizer,
        model_dir=model_dir,
        model_type=model_type,
        modality="image",
        prompts=[prompt for _, prompt in pairs],
        media=[[request.image] for request, _ in pairs],
        image_data_format="pt",
        device="cuda",
        trust_remote_code=trust_remote_code,
    )
    if len(inputs) != len(pairs):
        raise RuntimeError(f"TensorRT-LLM built {len(inputs)} inputs for {len(pairs)} prompts")
    return inputs


def parse_outputs(outputs: Sequence[Any], inputs: Sequence[dict[str, Any]]) -> list[str]:
    """Caption strings from `RequestOutput`s (their first completion), in request order."""
    if len(outputs) != len(inputs):
        raise RuntimeError(f"TensorRT-LLM returned {len(outputs)} outputs for {len(inputs)} requests")
    return [output.outputs[0].text.strip() for output in outputs]


class TRTEngine(CaptionEngine):
    """Captions through `tensorrt_llm.LLM` (PyTorch or TensorRT backend, on a GPU)."""

    name = "trt"

    @classmethod
    def check_available(cls) -> None:
        import_tensorrt_llm()

    def __init__(
        self, model: str | Path, settings: GenerationSettings, *, device: str = "cuda", trust_remote_code: bool = False
    ) -> None:
        """`device` is not used: TensorRT-LLM always runs on the GPU(s) its own launcher assigns."""
        trt = import_tensorrt_llm()
        from tensorrt_llm.inputs import default_multimodal_input_loader
        from tensorrt_llm.llmapi import KvCacheConfig

        self.model_id = str(model)
        self.settings = settings
        self.trust_remote_code = trust_remote_code
        self.model_type = model_type_of(model)
        kv_cache = KvCacheConfig(free_gpu_memory_fraction=KV_CACHE_FRACTION, enable_block_reuse=False)
        self.llm = trt.LLM(**llm_kwargs(model, settings, kv_cache, trust_remote_code))
        self.sampling_params = trt.SamplingParams(**sampling_kwargs(settings))
        self._loader = default_multimodal_input_loader

    def caption(self, requests: Sequence[ImageRequest]) -> list[list[str]]:
        if not requests:
            return []
        inputs = build_inputs(
            requests,
            loader=self._loader,
            tokenizer=self.llm.tokenizer,
            model_dir=self.model_id,
            model_type=self.model_type,
            trust_remote_code=self.trust_remote_code,
        )
        outputs = self.llm.generate(inputs, self.sampling_params, use_tqdm=False)
        return per_image(parse_outputs(outputs, inputs), requests)

    def close(self) -> None:
        shutdown = getattr(self.llm, "shutdown", None)
        if shutdown is not None:
            shutdown()
