"""Which compute backends were built into this install and which can run here, and why not."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

BACKEND_NAMES = ("reference", "cpp", "triton", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is part of this install (`built`), can run here (`usable`), and why."""

    name: str
    built: bool
    usable: bool
    detail: str


def load_native(name: str) -> ModuleType | None:
    """Import a native module of vlmkd (`_C` or `_cuda`), or None when it was not built or cannot load."""
    try:
        return importlib.import_module(f"vlmkd.{name}")
    except ImportError:
        return None


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _reference_status() -> BackendStatus:
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


def backends() -> dict[str, BackendStatus]:
    """Status of every backend, keyed by name (reference, cpp, triton, cuda)."""
    return {
        "reference": _reference_status(),
        "cpp": _cpp_status(),
        "triton": _triton_status(),
        "cuda": _cuda_status(),
    }
