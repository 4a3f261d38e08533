"""The compute backends of the fused VLM-KD loss: what each is, whether it was built, whether it can run here.

Every backend is one registration in `BACKENDS` (name -> `ContrastiveBackend`); `vlmkd.backends()`, `vlmkd
info`, `VLMKD_BACKEND`, `--contrastive-backend` and the dispatcher in `vlmkd.ops.contrastive` read it. torch
is imported only when a status is asked for, so `import vlmkd` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from vlmkd.registry import Registry


@dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is part of this install (`built`), can run here (`usable`), and why."""

    name: str
    built: bool
    usable: bool
    detail: str


@dataclass(frozen=True)
class ContrastiveBackend:
    """How to reach a backend of the contrastive loss.

    `ops_module` registers `torch.ops.vlmkd.contrastive_forward_<name>` / `contrastive_backward_<name>` when
    imported (None: plain autograd over `contrastive_ref`). `device_problem(device_type, interpret)` says why
    it cannot take tensors of that device type (None when it can). `auto_devices` are the device types on
    which it is picked without being asked; among those the highest `priority` that can run wins.
    """

    status: Callable[[], BackendStatus]
    ops_module: str | None
    device_problem: Callable[[str, bool], str | None]
    auto_devices: tuple[str, ...] = ()
    priority: int = 0


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _reference_status() -> BackendStatus:
    import torch

    return BackendStatus("reference", True, True, f"plain PyTorch {torch.__version__}")


def _cpp_status() -> BackendStatus:
    try:
        native = importlib.import_module("vlmkd._C")
    except ImportError as error:
        return BackendStatus("cpp", False, False, f"vlmkd._C did not import: {error}")
    threads = native.max_threads()
    openmp = "OpenMP" if native.with_openmp else "no OpenMP"
    return BackendStatus("cpp", True, True, f"C++ ({openmp}, {threads} threads)")


def _triton_status() -> BackendStatus:
    import torch

    try:
        import triton
    except ImportError:
        return BackendStatus("triton", False, False, "triton is not installed (pip install triton)")
    if triton_interpret():
        return BackendStatus("triton", True, True, f"triton {triton.__version__} on the CPU interpreter")
    if torch.cuda.is_available():
        return BackendStatus("triton", True, True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}")
    return BackendStatus(
        "triton",
        True,
        False,
        f"triton {triton.__version__} installed, but no GPU (set TRITON_INTERPRET=1 to run on CPU)",
    )


def _cuda_status() -> BackendStatus:
    import torch

    try:
        native = importlib.import_module("vlmkd._cuda")
    except ImportError as error:
        return BackendStatus("cuda", False, False, f"vlmkd._cuda was not built or did not import: {error}")
    version = native.runtime_version
    built_with = f"CUDA runtime {version // 1000}.{(version % 1000) // 10}"
    if native.device_count() == 0:
        return BackendStatus("cuda", True, False, f"built ({built_with}), but {native.device_error()}")
    if not torch.cuda.is_available():
        return BackendStatus("cuda", True, False, f"built ({built_with}), but this torch has no CUDA support")
    return BackendStatus("cuda", True, True, f"{built_with} on {torch.cuda.get_device_name()}")


def runs_on(device: str, label: str) -> Callable[[str, bool], str | None]:
    """A `device_problem` for a backend that takes only `device` tensors (`label`: how to say so)."""

    def problem(device_type: str, interpret: bool) -> str | None:
        return None if device_type == device else f"it runs on {label} tensors, got {device_type} tensors"

    return problem


def _triton_device_problem(device_type: str, interpret: bool) -> str | None:
    if device_type == "cuda" or (device_type == "cpu" and interpret):
        return None
    return f"it runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device_type} tensors"


BACKENDS: Registry[ContrastiveBackend] = Registry("backend")
BACKENDS.register(
    "reference",
    ContrastiveBackend(_reference_status, None, lambda device_type, interpret: None, ("cpu", "cuda"), priority=0),
    "plain PyTorch autograd over contrastive_ref: runs everywhere, the ground truth in tests",
)
BACKENDS.register(
    "cpp",
    ContrastiveBackend(_cpp_status, "vlmkd.ops.contrastive_cpp", runs_on("cpu", "CPU"), ("cpu",), priority=10),
    "C++/OpenMP kernels around BLAS GEMMs (vlmkd._C), CPU tensors",
)
BACKENDS.register(
    "triton",
    ContrastiveBackend(_triton_status, "vlmkd.ops.contrastive_triton", _triton_device_problem, ("cuda",), priority=20),
    "flash-style Triton kernels, GPU (or the CPU interpreter under TRITON_INTERPRET=1)",
)
BACKENDS.register(
    "cuda",
    ContrastiveBackend(_cuda_status, "vlmkd.ops.contrastive_cuda", runs_on("cuda", "CUDA"), ("cuda",), priority=30),
    "flash-style CUDA C++ kernels (vlmkd._cuda), GPU",
)


def backends() -> dict[str, BackendStatus]:
    """Status of every registered backend, keyed by name (reference, cpp, triton, cuda)."""
    return {name: BACKENDS.get(name).status() for name in BACKENDS}
