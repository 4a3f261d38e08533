"""Evaluation: long-tail split accuracies and the paper's figures."""

from vlmkd._stage_module import make_callable
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

make_callable(__name__)  # `vlmkd.evaluate(...)` runs the stage: see vlmkd.api.evaluate
