"""vlmkd: knowledge distillation from vision-language-model captions for long-tail image recognition."""

from __future__ import annotations

from vlmkd.backends import BackendStatus, backends
from vlmkd.errors import InputError, MissingDependencyError, StoreMismatchError, VlmkdError

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "InputError",
    "MissingDependencyError",
    "StoreMismatchError",
    "VlmkdError",
    "__version__",
    "backends",
]
