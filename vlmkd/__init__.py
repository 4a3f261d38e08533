"""vlmkd: knowledge distillation from vision-language-model captions for long-tail image recognition.

The pipeline from Python, one function per stage (each takes a config or keywords and returns a small result)::

    import vlmkd

    report = vlmkd.caption(dataset="train.txt", model="blip_dir", out="captions")
    features = vlmkd.encode(captions=report.store, out="features")
    run = vlmkd.train(train="train.txt", features=features, vlmkd_weight=1.0, output="run")
    result = vlmkd.evaluate(checkpoint=run, dataset="test.txt")
    result.top1["few"], result.figures["per_class"]

Importing vlmkd is cheap and changes nothing: the names under TYPE_CHECKING below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vlmkd.backends import BackendStatus, backends  # the function, not the module of the same name
from vlmkd.errors import InputError, MissingDependencyError, StoreMismatchError, VlmkdError
from vlmkd.lazy import lazy_exports
from vlmkd.version import __version__

# The stage packages (cheap: their names are lazy too) load before the stage functions take their names: Python
# sets `vlmkd.train` to the package only when the package first loads, so `import vlmkd.train.config` later
# leaves `vlmkd.train` the function.
for _stage in ("caption", "encode", "train", "evaluate"):
    importlib.import_module(f"vlmkd.{_stage}")
from vlmkd.pipeline import EncodeResult, caption, encode, evaluate, train  # noqa: E402

if TYPE_CHECKING:
    from vlmkd import data, losses, ops, reporting, testing
    from vlmkd.caption.config import CaptionConfig
    from vlmkd.caption.engines.base import GenerationSettings
    from vlmkd.caption.runner import CaptionReport
    from vlmkd.encode.config import EncodeConfig
    from vlmkd.evaluate.config import EvalConfig
    from vlmkd.evaluate.run import EvalResult
    from vlmkd.train.config import TrainConfig
    from vlmkd.train.trainer import TrainResult

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
    "losses",
    "ops",
    "reporting",
    "testing",
    "train",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
