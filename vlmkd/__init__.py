"""vlmkd: knowledge distillation from vision-language-model captions for long-tail image recognition.

The pipeline from Python, one call per stage (each takes a config or keywords and returns a small result)::

    import vlmkd

    report = vlmkd.caption(dataset="train.txt", model="blip_dir", out="captions")
    features = vlmkd.encode(captions=report.store, out="features")
    run = vlmkd.train(train="train.txt", features=features, vlmkd_weight=1.0, output="run")
    result = vlmkd.evaluate(checkpoint=run, dataset="test.txt")
    result.top1["few"], result.figures["per_class"]

Importing vlmkd is cheap and changes nothing: every name below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlmkd.backends import BackendStatus, backends  # the function, not the module of the same name
from vlmkd.errors import InputError, MissingDependencyError, StoreMismatchError, VlmkdError

__version__ = "0.1.0"

# name -> module it lives in (a stage subpackage's own name is the package, which is callable)
_LAZY = {
    "caption": "vlmkd.caption",
    "encode": "vlmkd.encode",
    "train": "vlmkd.train",
    "evaluate": "vlmkd.evaluate",
    "data": "vlmkd.data",
    "ops": "vlmkd.ops",
    "CaptionConfig": "vlmkd.caption.config",
    "GenerationSettings": "vlmkd.caption.engines.base",
    "CaptionReport": "vlmkd.caption.runner",
    "EncodeConfig": "vlmkd.encode.config",
    "EncodeResult": "vlmkd.api",
    "TrainConfig": "vlmkd.train.config",
    "TrainResult": "vlmkd.train.trainer",
    "EvalConfig": "vlmkd.evaluate.config",
    "EvalResult": "vlmkd.evaluate.run",
}

if TYPE_CHECKING:
    from vlmkd import caption, data, encode, evaluate, ops, train
    from vlmkd.api import EncodeResult
    from vlmkd.caption.config import CaptionConfig
    from vlmkd.caption.engines.base import GenerationSettings
    from vlmkd.caption.runner import CaptionReport
    from vlmkd.encode.config import EncodeConfig
    from vlmkd.evaluate.config import EvalConfig
    from vlmkd.evaluate.run import EvalResult
    from vlmkd.train.config import TrainConfig
    from vlmkd.train.trainer import TrainResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmkd' has no attribute {name!r}")
    imported = importlib.import_module(module)
    return imported if module == f"vlmkd.{name}" else getattr(imported, name)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BackendStatus",
    "CaptionConfig",
    "CaptionReport",
    "EncodeConfig",
    "EncodeResult",
    "EvalConfig",
    "EvalResult",
    "GenerationSettings",
    "InputError",
    "MissingDependencyError",
    "StoreMismatchError",
    "TrainConfig",
    "TrainResult",
    "VlmkdError",
    "__version__",
    "backends",
    "caption",
    "data",
    "encode",
    "evaluate",
    "ops",
    "train",
]
