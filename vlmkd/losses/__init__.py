"""Training objectives: long-tail task losses, logit KD, the VLM-KD contrastive loss module and the combined
objective."""

from vlmkd.losses.contrastive import BatchCentering, VlmkdContrastiveLoss
from vlmkd.losses.kd import logit_kd
from vlmkd.losses.objective import VlmkdObjective
from vlmkd.losses.task import TASK_LOSSES, TaskLoss

__all__ = ["TASK_LOSSES", "BatchCentering", "TaskLoss", "VlmkdContrastiveLoss", "VlmkdObjective", "logit_kd"]
