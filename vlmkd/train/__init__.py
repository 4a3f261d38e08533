"""Stage 3: config, loop, checkpoints and DDP helpers behind `vlmkd-train`.

The stage itself runs as `vlmkd.train(...)` (`vlmkd.pipeline`); the names below are imported on first use.
"""

from typing import TYPE_CHECKING

from vlmkd.lazy import lazy_exports

if TYPE_CHECKING:
    from vlmkd.train.checkpoint import load_classifier, save_classifier
    from vlmkd.train.config import TrainConfig, read_config_file, resolve_config
    from vlmkd.train.trainer import TrainResult

__all__ = [
    "TrainConfig",
    "TrainResult",
    "load_classifier",
    "read_config_file",
    "resolve_config",
    "save_classifier",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
