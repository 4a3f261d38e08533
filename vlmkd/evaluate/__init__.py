"""Evaluation: long-tail split accuracies and the paper's figures."""

from vlmkd.evaluate.metrics import Predictions, format_table, per_class_accuracy, predict, split_accuracy
from vlmkd.evaluate.run import evaluate_checkpoint

__all__ = ["Predictions", "evaluate_checkpoint", "format_table", "per_class_accuracy", "predict", "split_accuracy"]
