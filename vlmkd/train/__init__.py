"""Training: config, loop, checkpoints and DDP helpers behind `vlmkd-train`."""

from vlmkd._stage_module import make_callable
from vlmkd.train.checkpoint import load_classifier, save_classifier
from vlmkd.train.config import TrainConfig, read_config_file, resolve_config
from vlmkd.train.trainer import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "load_classifier",
    "read_config_file",
    "resolve_config",
    "save_classifier",
    "train",
]

make_callable(__name__)  # `vlmkd.train(...)` runs the stage: see vlmkd.api.train
