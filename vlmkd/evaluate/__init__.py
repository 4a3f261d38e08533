"""Stage 4: long-tail split accuracies and the paper's figures.

The stage itself runs as `vlmkd.evaluate(...)` (`vlmkd.pipeline`); the names below are imported on first use.
"""

from typing import TYPE_CHECKING

from vlmkd.lazy import lazy_exports

if TYPE_CHECKING:
    from vlmkd.evaluate.config import EvalConfig
    from vlmkd.evaluate.features import EvalFeatures, load_eval_features, save_eval_features
    from vlmkd.evaluate.metrics import Predictions, format_table, per_class_accuracy, predict, split_accuracy
    from vlmkd.evaluate.run import EvalResult, evaluate_checkpoint, run_evaluation

__all__ = [
    "EvalConfig",
    "EvalFeatures",
    "EvalResult",
    "Predictions",
    "evaluate_checkpoint",
    "format_table",
    "load_eval_features",
    "per_class_accuracy",
    "predict",
    "run_evaluation",
    "save_eval_features",
    "split_accuracy",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
