"""The `trt` engine: TensorRT-LLM's `LLM` API (PyTorch backend) with multimodal prompts, kept full.

Every prompt of an image is submitted with `LLM.generate_async` as soon as its batch is built; the runner keeps
`submit_ahead` captions in flight (thousands), so TensorRT-LLM's in-flight batcher always has work, and
collects them in order, so the store keeps its order and resumes as with any engine. Prompt texts come from
TensorRT-LLM's own input loader, worked out once (`trt_prompts`). KV-cache block reuse is on for the models
TensorRT-LLM's multimodal support matrix marks "KV Cache Reuse: Yes" (their image is hashed into the block
keys, so the prompts of one image share its prefill), off elsewhere. Written against TensorRT-LLM's source (the
1.2 to 1.4 pre-release API; tests/stand_ins/ names the files read) and tested with a strict stand-in carrying
those signatures; running it needs a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vlmkd.caption.engines.base import Caption, CaptionEngine, GenerationSettings, ImageRequest, RequestFailure
from vlmkd.caption.engines.trt_prompts import PromptTexts
from vlmkd.caption.engines.trt_runtime import import_tensorrt_llm
from vlmkd.errors import InputError

# TensorRT-LLM's multimodal support matrix (docs, "KV Cache Reuse" column): the model types marked "Yes".
KV_CACHE_REUSE_MODEL_TYPES = frozenset({"llava_next", "qwen2_vl", "qwen2_5_vl"})
KV_CACHE_FRACTION = 0.6  # of free GPU memory, leaving room for the vision encoder's activations
IN_FLIGHT = 4096  # captions the runner keeps submitted: thousands, so the in-flight batcher stays full
# Files whose `auto_map` makes transformers load code shipped with the model.
_CODE_CONFIGS = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


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


def code_shipped_with(model: str | Path) -> Path | None:
    """The first config file of `model` that makes transformers run the model's own code (`auto_map`)."""
    for name in _CODE_CONFIGS:
        path = Path(model) / name
        try:
            if "auto_map" in json.loads(path.read_text(encoding="utf-8")):
                return path
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
            continue
    return None


def kv_cache_reuse_for(model_type: str, override: bool | None = None) -> bool:
    """Block reuse: `override` when given, else whether TensorRT-LLM supports it for `model_type`."""
    return override if override is not None else model_type in KV_CACHE_REUSE_MODEL_TYPES


def sampling_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """`SamplingParams` arguments equivalent to `settings` (greedy when no sampling argument is given)."""
    kwargs: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "n": 1}
    if settings.num_beams > 1:
        kwargs.update(use_beam_search=True, best_of=settings.num_beams)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
    return kwargs


class TRTEngine(CaptionEngine):
    """Captions through `tensorrt_llm.LLM` on this process's GPU (under torchrun: the rank's own)."""

    name = "trt"
    submit_ahead = IN_FLIGHT

    @classmethod
    def check_available(cls) -> None:
        import_tensorrt_llm()

    def __init__(
        self,
        model: str | Path,
        settings: GenerationSettings,
        *,
        device: str = "cuda",
        trust_remote_code: bool = False,
        kv_cache_reuse: bool | None = None,
        in_flight: int = IN_FLIGHT,
        llm_options: dict[str, Any] | None = None,
    ) -> None:
        """`device` is not used (TensorRT-LLM takes the visible GPU). `kv_cache_reuse` overrides the support
        matrix; `in_flight` is how many captions are kept submitted; `llm_options` go to `LLM(...)` as they
        are (e.g. `max_num_tokens`, `max_batch_size`)."""
        if settings.dtype == "float32":
            raise InputError("the trt engine cannot run float32 (TensorRT-LLM's PyTorch kernels do not support it): "
                             "use dtype auto (the model's own, bf16 for LLaVA-NeXT), bfloat16 or float16")  # fmt: skip
        self.model_id = str(model)
        self.settings = settings
        self.model_type = model_type_of(model)
        shipped = code_shipped_with(model)
        if shipped is not None and not trust_remote_code:
            raise InputError(
                f"{shipped}: the model ships its own code (auto_map), which TensorRT-LLM's input loader runs "
                "whatever vlmkd asks (it loads the processor with trust_remote_code=True): pass "
                "--trust-remote-code to accept that"
            )
        trt = import_tensorrt_llm()
        from tensorrt_llm.inputs import default_multimodal_input_loader
        from tensorrt_llm.llmapi import KvCacheConfig

        self.kv_cache_reuse = kv_cache_reuse_for(self.model_type, kv_cache_reuse)
        self.submit_ahead = in_flight
        kv_cache = KvCacheConfig(free_gpu_memory_fraction=KV_CACHE_FRACTION, enable_block_reuse=self.kv_cache_reuse)
        beams = {"max_beam_width": settings.num_beams} if settings.num_beams > 1 else {}
        self.llm = trt.LLM(model=self.model_id, dtype=settings.dtype, trust_remote_code=trust_remote_code,
                           kv_cache_config=kv_cache, **beams, **(llm_options or {}))  # fmt: skip
        self.sampling_params = trt.SamplingParams(**sampling_kwargs(settings))
        self.prompt_texts = PromptTexts(
            default_multimodal_input_loader, tokenizer=self.llm.tokenizer, model_dir=self.model_id,
            model_type=self.model_type,
        )  # fmt: skip
        # Waits for the outputs, batch after batch in submission order; submitting never waits.
        self._collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmkd-trt-collect")

    def submit(self, requests: Sequence[ImageRequest]) -> Future[list[list[Caption]]]:
        """Submit every prompt of every image now (all prompts of an image together, so block reuse can share
        its prefill); the future resolves once they are all back."""
        texts = self.prompt_texts.texts(requests)
        pending = [
            [self._generate(text, request.image) for text in prompt_texts]
            for request, prompt_texts in zip(requests, texts, strict=True)
        ]
        return self._collector.submit(_collect, pending)

    def caption(self, requests: Sequence[ImageRequest]) -> list[list[Caption]]:
        return self.submit(requests).result()

    def _generate(self, text: str, image: Any) -> Any:
        """The request's `RequestOutput`, or a `RequestFailure` where TensorRT-LLM refuses it on submission (a
        `ValueError`, e.g. a prompt longer than `max_num_tokens`); anything else stops the run."""
        try:
            return self.llm.generate_async(
                {"prompt": text, "multi_modal_data": {"image": [image]}}, sampling_params=self.sampling_params
            )
        except ValueError as error:
            return RequestFailure(f"TensorRT-LLM: {str(error).splitlines()[0] if str(error) else 'ValueError'}")

    def close(self) -> None:
        self._collector.shutdown(wait=True)
        self.llm.shutdown()


def _collect(pending: list[list[Any]]) -> list[list[Caption]]:
    """Captions of submitted requests (first completion, stripped), waiting for each in turn."""
    return [
        [item if isinstance(item, RequestFailure) else item.result().outputs[0].text.strip() for item in image]
        for image in pending
    ]
