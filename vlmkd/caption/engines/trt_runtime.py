"""Starting TensorRT-LLM in this process: the lazy import with its install hint, and this rank's GPU.

Under torchrun every rank is a process of its own on one machine; TensorRT-LLM (like CUDA) takes the GPUs that
CUDA_VISIBLE_DEVICES shows when it starts, so each rank must be given its own GPU before `tensorrt_llm` is
imported. Where that is too late (TensorRT-LLM or CUDA already started in this process), the engine refuses
in one line instead of putting every rank on GPU 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from types import ModuleType

from vlmkd.errors import InputError, MissingDependencyError

INSTALL_HINT = (
    "the trt engine needs TensorRT-LLM: pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com "
    "(or use an NGC TensorRT-LLM container); --engine hf works without it"
)
PINNED = "VLMKD_TRT_PINNED_RANK"  # set once this process has pinned its rank's GPU


def pin_rank_gpu(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Under torchrun (LOCAL_RANK set), make CUDA_VISIBLE_DEVICES show this rank's GPU only; the device it
    shows, or None outside torchrun. `InputError` when TensorRT-LLM or CUDA started here before."""
    local_rank = environ.get("LOCAL_RANK")
    if local_rank is None:
        return None
    if environ.get(PINNED) == local_rank:
        return environ["CUDA_VISIBLE_DEVICES"]
    if "tensorrt_llm" in sys.modules or _cuda_started():
        raise InputError(
            f"LOCAL_RANK={local_rank}: TensorRT-LLM or CUDA started in this process before vlmkd could give this "
            "rank its own GPU; run vlmkd-caption --engine trt under torchrun directly (one process per GPU)"
        )
    visible = [device.strip() for device in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if device.strip()]
    if len(visible) == 1:
        device = visible[0]  # the launcher already gave each rank one GPU
    elif not visible:
        device = local_rank
    elif int(local_rank) < len(visible):
        device = visible[int(local_rank)]
    else:
        raise InputError(f"LOCAL_RANK={local_rank}, but CUDA_VISIBLE_DEVICES lists {len(visible)} GPUs")
    environ["CUDA_VISIBLE_DEVICES"] = device
    environ[PINNED] = local_rank
    return device


def import_tensorrt_llm() -> ModuleType:
    """The `tensorrt_llm` module (imported after this rank's GPU is pinned), or `MissingDependencyError`."""
    pin_rank_gpu()
    try:
        import tensorrt_llm
    except ImportError as error:
        raise MissingDependencyError(f"{INSTALL_HINT} ({error})") from None
    return tensorrt_llm


def _cuda_started() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()
