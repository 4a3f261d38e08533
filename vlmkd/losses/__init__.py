"""Training objectives: long-tail task losses, logit KD and the combined VLM-KD objective."""

from vlmkd.losses.kd import logit_kd
from vlmkd.losses.objective import VlmkdObjective
from vlmkd.losses.task import TASK_LOSSES, TaskLoss

__all__ = ["TASK_LOSSES", "TaskLoss", "VlmkdObjective", "logit_kd"]
