"""Evaluation: long-tail split accuracies and the paper's figures."""

from vlmkd.evaluate.features import EvalFeatures, load_eval_features, save_eval_features
from vlmkd.evaluate.metrics import Predictions, format_table, per_class_accuracy, predict, split_accuracy
from vlmkd.evaluate.run import evaluate_checkpoint

__all__ = [
    "EvalFeatures",
    "Predictions",
    "evaluate_checkpoint",
    "format_table",
    "load_eval_features",
    "per_class_accuracy",
    "predict",
    "save_eval_features",
    "split_accuracy",
]
