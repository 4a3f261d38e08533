"""Stand-in for tensorrt_llm/llmapi/llm.py: `LLM` (the PyTorch-backend LLM), `RequestOutput`, `CompletionOutput`.

Signatures from TensorRT-LLM's tensorrt_llm/llmapi/llm.py (repository file at commit 4c05a748; the same
`LLM(model, tokenizer, tokenizer_mode, skip_tokenizer_init, trust_remote_code, tensor_parallel_size, dtype,
revision, tokenizer_revision, **kwargs)` heads the API references of 1.3.0rc26 and 1.4.0rc4). Upstream,
`**kwargs` are checked against the fields of `TorchLlmArgs` ("LLM got invalid argument: ..."): the stand-in
takes, keyword-only, only the fields vlmkd passes (`kv_cache_config`, `max_beam_width`) and the two whose limits
it emulates (`max_batch_size`, `max_num_tokens`), with `BaseLlmArgs`' defaults; any other name fails here.

Behaviour: see tests/stand_ins/README.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorrt_llm.llmapi.llm_args import KvCacheConfig
from tensorrt_llm.llmapi.tokenizer import TransformersTokenizer
from tensorrt_llm.sampling_params import SamplingParams

_WORDS = ("a", "small", "dark", "bright", "round", "thin", "digit", "line", "curve", "photo", "of", "with",
          "loop", "stroke", "tilted", "bold")  # fmt: skip


@dataclass
class CompletionOutput:
    """One output sequence of a request (upstream: tensorrt_llm/executor/result.py)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class RequestOutput:
    """The output of one request; `result()` waits for it, as upstream's GenerationResult does. Built by the LLM
    only (upstream raises when users construct it)."""

    def __init__(self, request_id: int, prompt: str | None) -> None:
        self.request_id = request_id
        self._prompt = prompt
        self.outputs: list[CompletionOutput] = []
        self.finished = False
        self._done = threading.Event()

    @property
    def prompt(self) -> str | None:
        return self._prompt

    def result(self, timeout: float | None = None) -> RequestOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        return self


class LLM:
    def __init__(
        self,
        model: str | Path,
        tokenizer: Any = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        *,
        kv_cache_config: KvCacheConfig | None = None,
        max_beam_width: int = 1,
        max_batch_size: int = 2048,
        max_num_tokens: int = 8192,
    ) -> None:
        from transformers import AutoProcessor

        model_dir = Path(model)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"the stand-in needs a local Hugging Face checkpoint, got {model}")
        if dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise ValueError(f"unknown dtype {dtype}")
        self.args = {"model": str(model), "dtype": dtype, "trust_remote_code": trust_remote_code,
                     "kv_cache_config": kv_cache_config or KvCacheConfig(), "max_beam_width": max_beam_width,
                     "max_batch_size": max_batch_size, "max_num_tokens": max_num_tokens}  # fmt: skip
        self.model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["model_type"]
        # Loaded once, as the input processor of a real LLM is.
        self._processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer = TransformersTokenizer(self._processor.tokenizer)
        image_token = getattr(self._processor, "image_token", None)
        self._image_token_id = self._processor.tokenizer.convert_tokens_to_ids(image_token) if image_token else None
        self._step_s = float(os.environ.get("VLMKD_TRT_STANDIN_STEP_S", "0"))
        self._queue: deque[tuple[RequestOutput, bytes, int]] = deque()
        self._lock = threading.Condition()
        self._next_id = 0
        self._in_flight = 0
        self._closed = False
        self.stats: list[tuple[float, int]] = []  # (perf_counter, requests in flight) after every change
        self._executor = threading.Thread(target=self._serve, name="trtllm-standin-executor", daemon=True)
        self._executor.start()

    def generate(
        self,
        inputs: Any,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | list[str] | None = None,
    ) -> RequestOutput | list[RequestOutput]:
        """Like upstream: `generate_async` for each input, then wait for all."""
        unbatched = not isinstance(inputs, list)
        batch = [inputs] if unbatched else inputs
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(batch)
        futures = [self.generate_async(item, sampling_params=p) for item, p in zip(batch, params, strict=True)]
        for future in futures:
            future.result()
        return futures[0] if unbatched else futures

    def generate_async(
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        """Tokenize and preprocess on the caller's thread (upstream's input processor does), then queue."""
        if self._closed:
            raise RuntimeError("LLM is shutting down")
        sampling_params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams or None, got {type(sampling_params)}")
        inputs = {"prompt": inputs} if isinstance(inputs, str) else inputs
        if not isinstance(inputs, dict) or "prompt" not in inputs:
            raise TypeError(f"The inputs must be type str or a prompt dict, but got {type(inputs)}")
        images = (inputs.get("multi_modal_data") or {}).get("image") or None
        processed = self._processor(images=images, text=[inputs["prompt"]], return_tensors="pt")
        token_ids = processed["input_ids"][0]
        if images and self._image_token_id is not None and not (token_ids == self._image_token_id).any():
            raise ValueError("the prompt has no image placeholder for its image")  # the model's processor fails
        if len(token_ids) > self.args["max_num_tokens"]:
            raise ValueError(f"The sum of prompt length ({len(token_ids)}.0), query length (0) should not exceed "
                             f"max_num_tokens ({self.args['max_num_tokens']})")  # fmt: skip
        digest = hashlib.sha256(token_ids.numpy().tobytes())
        if images:
            digest.update(processed["pixel_values"].numpy().tobytes())
        with self._lock:
            output = RequestOutput(self._next_id, inputs["prompt"])
            self._next_id += 1
            self._queue.append((output, digest.digest(), sampling_params.max_tokens))
            self._in_flight += 1
            self.stats.append((time.perf_counter(), self._in_flight))
            self._lock.notify()
        return output

    def _serve(self) -> None:
        """The in-flight batcher: each step takes up to max_batch_size queued requests and finishes them."""
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                count = min(len(self._queue), self.args["max_batch_size"])
                step = [self._queue.popleft() for _ in range(count)]
            if self._step_s:
                time.sleep(self._step_s)
            for output, digest, max_tokens in step:
                words = [_WORDS[byte % len(_WORDS)] for byte in (digest * (1 + max_tokens // len(digest)))[:max_tokens]]
                output.outputs = [CompletionOutput(index=0, text=" " + " ".join(words), finish_reason="length")]
                output.finished = True
                output._done.set()
            with self._lock:
                self._in_flight -= count
                self.stats.append((time.perf_counter(), self._in_flight))

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._executor.join()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
